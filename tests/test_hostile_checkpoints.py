"""Hostile checkpoints: files that try to make the export read outside the folder, allocate terabytes, or unpickle.

Each is refused with our error (naming the file and the fix) from the
headers alone, before any large allocation.  The safetensors headers are
also fuzzed (hypothesis, derandomized): random JSON and random bytes give a
header or a :class:`~optimum_wc.errors.ModelError`, nothing else.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from optimum_wc.checkpoints.integrity import check_checkpoint_files, check_safetensors_file
from optimum_wc.checkpoints.reader import _weight_files
from optimum_wc.checkpoints.tensors import CheckpointTensors, read_header
from optimum_wc.errors import ExportError, ModelError


def write_safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    """A file in safetensors framing: 8-byte length, header (JSON of ``header`` or raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _one_tensor(path: Path) -> Path:
    return write_safetensors(path, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                             np.ones(2, np.float32).tobytes())


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"])
def test_an_index_naming_a_shard_outside_the_folder_is_refused(tmp_path, shard):
    """Before: every reader joined the name to the folder and read the outside file."""
    outside = _one_tensor(tmp_path / "outside.safetensors")
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    shard = str(outside) if shard == "ABSOLUTE" else shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    fix = r"outside the checkpoint folder .* Fix the weight_map to plain file names of the folder"
    with pytest.raises(ModelError, match=fix):
        CheckpointTensors(folder)
    with pytest.raises(ModelError, match=fix):
        check_checkpoint_files(folder)
    with pytest.raises(ModelError, match=fix):
        _weight_files(folder, None)  # the GPTQ/AWQ reader


def test_an_index_shard_symlinked_into_a_blob_store_is_read(tmp_path):
    """The hub cache links each snapshot file to ../../blobs/<hash>: the name stays in the folder, so it is read."""
    (tmp_path / "blobs").mkdir()
    blob = _one_tensor(tmp_path / "blobs" / "abc123")
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "model-1.safetensors").symlink_to(blob)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    assert CheckpointTensors(folder).array("w").tolist() == [1.0, 1.0]


def _peak_bytes(call) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        call()
        error = None
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, error


def test_a_terabyte_header_length_is_refused_without_allocating(tmp_path):
    file = write_safetensors(tmp_path / "model.safetensors", {}, length=2**40)
    peak, error = _peak_bytes(lambda: read_header(file))
    assert isinstance(error, ModelError) and "length field says 1099511627776 bytes" in str(error)
    assert peak < 1_000_000


@pytest.mark.parametrize("shape", [[2**40, 2**40], [10**200, 10**200], [2**62, 4]])
def test_a_shape_far_beyond_the_file_is_refused_before_reading(tmp_path, shape):
    """Before: CheckpointTensors took the header as it was (a read would size its buffer from it), and the
    integrity check overflowed a float (OverflowError) on a shape of 10**400 elements."""
    folder = tmp_path / "model"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}},
                      bytes(8))
    peak, error = _peak_bytes(lambda: CheckpointTensors(folder))
    assert isinstance(error, ModelError), error
    assert f"shape {shape}" in str(error) and "Re-download the checkpoint" in str(error)
    assert peak < 1_000_000


def test_data_offsets_beyond_the_file_are_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors",
                      {"w": {"dtype": "U8", "shape": [2**45], "data_offsets": [0, 2**45]}}, bytes(8))
    with pytest.raises(ModelError, match="is truncated: its header says 35184372088832 bytes of tensor data"):
        CheckpointTensors(folder)


def test_a_deeply_nested_header_is_a_model_error(tmp_path):
    """Before: json's RecursionError escaped."""
    file = write_safetensors(tmp_path / "model.safetensors", b"[" * 100_000)
    with pytest.raises(ModelError, match="has a corrupt header"):
        check_safetensors_file(file)


# -- fuzzing the headers

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
NUMBERS = st.integers(-(2**70), 2**70) | st.integers(0, 64) | st.floats() | st.booleans() | st.none()
JSON = st.recursive(NUMBERS | st.text(max_size=6) | st.sampled_from(["F32", "BF16", "I32", "U8", "F4", "X9"]),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)
ENTRY = st.fixed_dictionaries({}, optional={"dtype": JSON | st.sampled_from(["F32", "U8", "BF16", "F4"]),
                                            "shape": st.lists(NUMBERS, max_size=3) | JSON,
                                            "data_offsets": st.lists(NUMBERS, min_size=2, max_size=2) | JSON})
HEADERS = st.dictionaries(st.text(max_size=4) | st.just("__metadata__"), ENTRY | JSON, max_size=3) | JSON


def _read_or_model_error(folder: Path) -> None:
    try:
        tensors = CheckpointTensors(folder)
    except ModelError as exc:
        assert str(exc).strip()
        return
    for name in tensors.info:  # a header that passed describes tensors that can be read
        try:
            tensors.read(name)
            tensors.array(name)
        except (ModelError, ExportError) as exc:  # e.g. a dtype optimum-wc cannot read
            assert str(exc).strip()


@FUZZ
@given(header=HEADERS, data=st.binary(max_size=32))
def test_random_json_headers_give_tensors_or_a_model_error(tmp_path_factory, header, data):
    folder = tmp_path_factory.mktemp("model")
    write_safetensors(folder / "model.safetensors", header, data)
    _read_or_model_error(folder)


@FUZZ
@given(raw=st.binary(max_size=80))
def test_random_bytes_give_a_model_error(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("model")
    (folder / "model.safetensors").write_bytes(raw)
    _read_or_model_error(folder)


def test_found_by_fuzzing_read_of_an_unreadable_dtype_names_it(tmp_path):
    """Before: ``read`` raised KeyError('F4') (only ``array`` checked the dtype)."""
    write_safetensors(tmp_path / "model.safetensors", {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"x")
    with pytest.raises(ExportError, match="tensor w has dtype F4, which optimum-wc cannot read; it reads F64"):
        CheckpointTensors(tmp_path).read("w")
