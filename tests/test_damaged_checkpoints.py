"""A damaged weight file is named as such, before any export: which file, what is wrong, and the fix.

Each kind of damage (truncated data, a header cut short, a header that is
not JSON, an impossible header length, bytes beyond the data, offsets that do
not fit the shapes or overlap, a missing or unreadable shard index) is made on
a copy of the tiny Llama, as one file or as a shard of an index, and on a
GPTQ checkpoint; every entry point reports it: the export CLI, export_model,
and from_pretrained(export=True) of both model classes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from optimum_wc import ModelError
from optimum_wc.checkpoints.integrity import check_checkpoint_files

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GPTQ_FIXTURE = FIXTURES / "gptqmodel" / "gptq-v1-g32-sym"
FIX = "Re-download the checkpoint"


def _split(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(file: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _tensors(header: dict) -> list[str]:
    """Tensor names by data offset."""
    return sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])


def truncate_data(file: Path) -> None:
    os.truncate(file, file.stat().st_size - 1000)


def cut_inside_header(file: Path) -> None:
    os.truncate(file, 20)


def shorter_than_length_field(file: Path) -> None:
    file.write_bytes(b"\x01\x02\x03")


def garbage_header(file: Path) -> None:
    raw = bytearray(file.read_bytes())
    raw[8:24] = b"#" * 16
    file.write_bytes(bytes(raw))


def impossible_length(file: Path) -> None:
    raw = bytearray(file.read_bytes())
    raw[:8] = struct.pack("<Q", 2**40)
    file.write_bytes(bytes(raw))


def extra_bytes(file: Path) -> None:
    with open(file, "ab") as f:
        f.write(b"\0" * 4096)


def wrong_shape(file: Path) -> None:
    header, data = _split(file)
    header[_tensors(header)[0]]["shape"][0] *= 2
    _join(file, header, data)


def overlapping_offsets(file: Path) -> None:
    header, data = _split(file)
    first, second = _tensors(header)[:2]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    header[second]["data_offsets"] = [header[first]["data_offsets"][0], header[first]["data_offsets"][0] + size]
    _join(file, header, data)


# damage -> what the message says
DAMAGES = {
    truncate_data: r"is truncated: its header says (\d+) bytes of tensor data, the file has (\d+)",
    cut_inside_header: r"is truncated: its header alone is \d+ bytes, the file has 20",
    shorter_than_length_field: r"is truncated: it has 3 bytes, fewer than the 8 bytes of its header length",
    garbage_header: r"has a corrupt header \(not valid JSON",
    impossible_length: r"has a corrupt header: its length field says 1099511627776 bytes",
    extra_bytes: r"is damaged: its header says \d+ bytes of tensor data, the file has \d+ \(4096 bytes too many\)",
    wrong_shape: r"has a corrupt header: tensor '.+' \(\w+, shape \[.+\]\) needs \d+ bytes, its data_offsets give \d+",
    overlapping_offsets: r"has a corrupt header: tensor '.+' overlaps the tensor before it",
}


def _sharded(source: Path, out: Path) -> Path:
    """``source`` re-saved as two shards and an index."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = load_file(str(source / "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[0::2], names[1::2])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@pytest.fixture(scope="module")
def sharded_dir(llama_dir, tmp_path_factory) -> Path:
    return _sharded(llama_dir, tmp_path_factory.mktemp("sharded") / "model")


def _damaged_copy(source: Path, tmp_path: Path, damage, file: str = "model.safetensors") -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(source, copy)
    damage(copy / file)
    return copy


@pytest.mark.parametrize("damage", list(DAMAGES), ids=lambda d: d.__name__)
def test_each_damage_of_a_single_file_is_named_with_the_fix(llama_dir, tmp_path, damage):
    folder = _damaged_copy(llama_dir, tmp_path, damage)
    with pytest.raises(ModelError, match=DAMAGES[damage]) as info:
        check_checkpoint_files(folder)
    assert str(folder / "model.safetensors") in str(info.value) and FIX in str(info.value)


def test_truncation_says_how_many_bytes_are_missing(llama_dir, tmp_path):
    folder = _damaged_copy(llama_dir, tmp_path, truncate_data)
    with pytest.raises(ModelError, match=DAMAGES[truncate_data]) as info:
        check_checkpoint_files(folder)
    import re

    expected, have = map(int, re.search(DAMAGES[truncate_data], str(info.value)).groups())
    assert expected - have == 1000


@pytest.mark.parametrize("damage", [truncate_data, garbage_header, extra_bytes], ids=lambda d: d.__name__)
def test_a_damaged_shard_is_named(sharded_dir, tmp_path, damage):
    folder = _damaged_copy(sharded_dir, tmp_path, damage, "model-00002-of-00002.safetensors")
    with pytest.raises(ModelError, match=DAMAGES[damage]) as info:
        check_checkpoint_files(folder)
    assert "model-00002-of-00002.safetensors" in str(info.value) and FIX in str(info.value)


def test_a_missing_shard_or_a_broken_index_is_named(sharded_dir, tmp_path):
    folder = _damaged_copy(sharded_dir, tmp_path, Path.unlink, "model-00001-of-00002.safetensors")
    with pytest.raises(ModelError, match=r"index.json lists model-00001-of-00002.safetensors, missing from .*: the "
                                         "download is incomplete. Download the missing shard"):
        check_checkpoint_files(folder)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')
    with pytest.raises(ModelError, match=r"model.safetensors.index.json is not a readable index .*Re-download"):
        check_checkpoint_files(folder)


def test_whole_checkpoints_pass(llama_dir, sharded_dir):
    """No false alarm: the tiny models, the sharded copy and every checkpoint made by the quantization tools."""
    folders = [llama_dir, sharded_dir, *(p.parent for p in FIXTURES.glob("*/*/config.json"))]
    assert len(folders) > 6
    for folder in folders:
        check_checkpoint_files(folder)


# -- every entry point reports it, before the exporter runs --------------------------------------------------------


@pytest.fixture()
def exporter_not_reached(monkeypatch):
    """optimum-intel's exporter fails the test if it is called: the damage must be found before."""
    import optimum.exporters.openvino as exporters
    import optimum.intel.openvino.modeling_decoder  # noqa: F401 - imported first, it binds the real exporter for later tests

    def main_export(*args, **kwargs):
        raise AssertionError("the exporter ran on a damaged checkpoint")

    monkeypatch.setattr(exporters, "main_export", main_export)


@pytest.mark.parametrize("source", ["float", "gptq"])
def test_export_model_names_the_damaged_file(llama_dir, tmp_path, source, exporter_not_reached):
    from optimum_wc import WeightCompressionConfig, export_model

    folder = _damaged_copy(llama_dir if source == "float" else GPTQ_FIXTURE, tmp_path, truncate_data)
    config = WeightCompressionConfig(mode="int4_asym", group_size=32) if source == "float" else None
    with pytest.raises(ModelError, match=r"model.safetensors is truncated"):
        export_model(folder, tmp_path / "out", config, load=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["float", "gptq"])
@pytest.mark.parametrize("stock", [False, True], ids=["ours", "optimum-intel"])
def test_from_pretrained_names_the_damaged_file(llama_dir, tmp_path, source, stock, exporter_not_reached):
    import optimum_wc

    if stock:
        from optimum.intel import OVModelForCausalLM as cls
    else:
        cls = optimum_wc.OVModelForCausalLM
    folder = _damaged_copy(llama_dir if source == "float" else GPTQ_FIXTURE, tmp_path, extra_bytes)
    with pytest.raises(ModelError, match=r"model.safetensors is damaged: .*\(4096 bytes too many\)"):
        cls.from_pretrained(folder, export=True, compile=False)


def test_export_cli_names_the_damaged_file(sharded_dir, tmp_path):
    folder = _damaged_copy(sharded_dir, tmp_path, truncate_data, "model-00001-of-00002.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-m", "optimum_wc", "export", str(folder), str(tmp_path / "out"),
                           "--weight-format", "int4"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("optimum-wc: error: ") and "model-00001-of-00002.safetensors is truncated" in last, last
    assert FIX in last and "architecture" not in last and "Exporting" not in done.stderr
