"""Nothing in a checkpoint runs as code: pickled weights are refused unopened, custom code is off by default."""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import pkgutil
from pathlib import Path

import pytest

import optimum_wc


class _Payload:
    """Unpickling this writes a marker file: proof that the pickle was opened."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _llama_config(folder: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                architectures=["LlamaForCausalLM"]).save_pretrained(folder)


PICKLE_REFUSED = (r"holds its weights only as pickled files \(pytorch_model.bin\); optimum-wc reads safetensors by "
                  r"default, because opening a pickle can run code\. Convert the checkpoint to safetensors .* pass "
                  r"--allow-pickle \(allow_pickle=True\)")


@pytest.fixture()
def pickled(tmp_path):
    """A float checkpoint whose only weights are a ``pytorch_model.bin`` that writes a marker when unpickled."""
    folder, marker = tmp_path / "model", tmp_path / "marker"
    _llama_config(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return folder, marker


def test_a_float_pickle_is_refused_by_default(pickled, tmp_path):
    from optimum_wc.errors import ModelError
    from optimum_wc.export.pipeline import export_folder

    folder, marker = pickled
    with pytest.raises(ModelError, match=PICKLE_REFUSED):
        export_folder(folder, tmp_path / "out", None)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["export", "{m}", "{o}"], ["export", "{m}", "{o}", "--weight-format", "int4"],
                                  ["tune", "{m}", "{o}", "--max-ppl-increase", "5%"]])
def test_every_command_refuses_a_float_pickle_by_default(pickled, tmp_path, capsys, argv):
    from optimum_wc.cli import main

    folder, marker = pickled
    code = main([a.format(m=folder, o=tmp_path / "out") for a in argv])
    err = capsys.readouterr().err
    assert code == 1 and re.search(PICKLE_REFUSED, err), err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_eval_refuses_a_pickled_reference_by_default(pickled, llama_ir, tmp_path, capsys):
    from optimum_wc.cli import main

    folder, marker = pickled
    code = main(["eval", str(llama_ir.parent), "--reference", str(folder), "--tokens", "64"])
    err = capsys.readouterr().err
    assert code == 1 and re.search(PICKLE_REFUSED, err), err
    assert not marker.exists()


def test_from_pretrained_refuses_a_float_pickle_by_default(pickled):
    from optimum_wc.errors import ModelError
    from optimum_wc import OVModelForCausalLM

    folder, marker = pickled
    with pytest.raises(ModelError, match=PICKLE_REFUSED):
        OVModelForCausalLM.from_pretrained(folder, export=True)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["api", "cli"])
def test_with_allow_pickle_a_malicious_pickle_is_still_never_executed(pickled, tmp_path, capsys, how):
    """Opted in, the pickle is read by transformers with ``torch.load(weights_only=True)``: code in it is refused,
    not run (a real one is exported: test_streaming)."""
    from optimum_wc.cli import main
    from optimum_wc.errors import ExportError
    from optimum_wc.export.pipeline import export_folder

    folder, marker = pickled
    if how == "api":
        with pytest.raises(ExportError, match="Weights only load failed"):
            export_folder(folder, tmp_path / "out", None, allow_pickle=True)
    else:
        assert main(["export", str(folder), str(tmp_path / "out"), "--allow-pickle"]) == 1
        assert "Weights only load failed" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_safetensors_beside_a_pickle_are_read_and_the_pickle_is_never_opened(llama_dir, tmp_path):
    """A folder with safetensors weights needs no opt-in: loaders prefer them and never open the .bin."""
    import shutil

    from optimum_wc.export.pipeline import export_folder

    folder, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(llama_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    export_folder(folder, tmp_path / "out", None)
    assert (tmp_path / "out" / "openvino_model.xml").is_file() and not marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_a_pickle_only_gptq_checkpoint_is_refused_unopened(tmp_path, name):
    from optimum_wc.checkpoints.reader import _weight_files
    from optimum_wc.errors import ExportError

    marker = tmp_path / "marker"
    (tmp_path / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ExportError, match=r"pickled \.bin/\.pt files; optimum-wc reads safetensors only. Re-save"):
        _weight_files(tmp_path, None)
    assert not marker.exists()


def _functions_with_trust_remote_code():
    for info in pkgutil.walk_packages(optimum_wc.__path__, "optimum_wc."):
        module = importlib.import_module(info.name)
        for owner in [module, *(c for _, c in inspect.getmembers(module, inspect.isclass)
                                if c.__module__ == module.__name__)]:
            for name, fn in inspect.getmembers(owner, inspect.isfunction):
                if fn.__module__ == module.__name__ and "trust_remote_code" in inspect.signature(fn).parameters:
                    yield f"{module.__name__}.{getattr(owner, '__name__', '')}.{name}", fn


def test_trust_remote_code_is_never_on_by_default():
    found = dict(_functions_with_trust_remote_code())
    assert len(found) >= 8, sorted(found)  # the walk does see the entry points
    on = {name: fn for name, fn in found.items()
          if inspect.signature(fn).parameters["trust_remote_code"].default not in (False, inspect.Parameter.empty)}
    assert not on, f"trust_remote_code defaults to something other than False in {sorted(on)}"


@pytest.mark.parametrize("argv", [["export", "m", "out"], ["export", "m", "out", "--weight-format", "int4"],
                                  ["tune", "m", "out", "--max-ppl-increase", "1"]])
def test_the_cli_leaves_trust_remote_code_off(argv):
    from optimum_wc.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.trust_remote_code is False


def test_the_optimum_cli_command_leaves_trust_remote_code_off():
    import argparse

    from optimum_wc.cli.options import add_export_options

    parser = argparse.ArgumentParser()
    add_export_options(parser)
    assert parser.parse_args(["-m", "m", "out"] if _needs_model_flag(parser) else ["m", "out"]).trust_remote_code is False


def _needs_model_flag(parser) -> bool:
    return any("-m" in a.option_strings for a in parser._actions)
