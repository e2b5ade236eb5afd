"""Is every weight file of a checkpoint whole?  Checked from the safetensors headers alone, before an export.

Objective: a damaged download is named as such (which file, what is wrong,
re-download it) instead of surfacing minutes later as an exporter error
about the architecture.  Only the headers are read (8 bytes of length, then
the JSON), whatever the size of the shards; the file sizes come from the
file system.

A safetensors file is valid when (the rules of the ``safetensors`` library,
which transformers' loader applies):

* ``8 + header length + data length == file size``, where the data length
  is the largest ``data_offsets`` end;
* the header is a JSON object of ``{name: {"dtype", "shape", "data_offsets"}}``
  (plus an optional ``__metadata__``), at most 100 MB long;
* every tensor's byte range holds exactly ``prod(shape) * dtype size``, and
  the ranges tile the data without gaps or overlaps.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..layout import SAFETENSORS_INDEX

MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses longer headers
# bits per element of each safetensors dtype (a dtype not listed here is not size-checked)
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6,
              "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64}
FIX = "Re-download the checkpoint (or save it again with save_pretrained)."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # torch.save's files: opening one runs the pickle's code


def _damaged(file: Path, problem: str) -> ModelError:
    return ModelError(f"{file} {problem}. {FIX}")


def read_safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """The header of one ``.safetensors`` file (``__metadata__`` included) and where its data starts.

    Raises :class:`ModelError` when the file is too short for its header or
    the header is not a JSON object.
    """
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise _damaged(file, f"is truncated: it has {size} bytes, fewer than the 8 bytes of its header length")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise _damaged(file, f"has a corrupt header: its length field says {length} bytes (safetensors allows "
                                 f"at most {MAX_HEADER_BYTES})")
        if 8 + length > size:
            raise _damaged(file, f"is truncated: its header alone is {length} bytes, the file has {size}")
        text = f.read(length)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise _damaged(file, f"has a corrupt header (not valid JSON: {' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(header, dict):
        raise _damaged(file, f"has a corrupt header (a JSON {type(header).__name__}, not an object)")
    return header, 8 + length


def _tensor_range(file: Path, name: str, meta: Any) -> tuple[int, int, str, list[int]]:
    """(begin, end, dtype, shape) of one header entry, its types checked."""
    ok = (isinstance(meta, dict) and isinstance(meta.get("dtype"), str) and isinstance(meta.get("shape"), list)
          and all(isinstance(d, int) and d >= 0 for d in meta["shape"]) and isinstance(meta.get("data_offsets"), list)
          and len(meta["data_offsets"]) == 2 and all(isinstance(o, int) for o in meta["data_offsets"]))
    if not ok:
        raise _damaged(file, f"has a corrupt header: the entry of tensor {name!r} is not "
                             "{dtype, shape, data_offsets: [begin, end]}")
    begin, end = meta["data_offsets"]
    if not 0 <= begin <= end:
        raise _damaged(file, f"has a corrupt header: tensor {name!r} has data_offsets [{begin}, {end}]")
    return begin, end, meta["dtype"], meta["shape"]


def check_tensor_layout(file: Path, header: dict[str, Any]) -> int:
    """The data length the header describes; raises when a tensor's bytes do not fit its shape or ranges overlap."""
    ranges = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end, dtype, shape = _tensor_range(file, name, meta)
        bits = DTYPE_BITS.get(dtype)
        if bits is not None and (end - begin) * 8 != math.prod(shape) * bits:  # integers: no float overflow
            raise _damaged(file, f"has a corrupt header: tensor {name!r} ({dtype}, shape {shape}) needs "
                                 f"{-(-math.prod(shape) * bits // 8)} bytes, its data_offsets give {end - begin}")
        ranges.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else f"starts {begin - position} bytes after " \
                                                                                 "the tensor before it ends"
            raise _damaged(file, f"has a corrupt header: tensor {name!r} {what}")
        position = end
    return position


def check_safetensors_file(file: Path) -> dict[str, Any]:
    """The header of ``file`` once the file is known whole: its size is the one the header describes."""
    return checked_safetensors_header(file)[0]


def checked_safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """:func:`read_safetensors_header` once every tensor's shape and byte range fit the file (else ModelError)."""
    header, data_start = read_safetensors_header(file)
    expected = check_tensor_layout(file, header)
    have = Path(file).stat().st_size - data_start
    if have < expected:
        raise _damaged(file, f"is truncated: its header says {expected} bytes of tensor data, the file has {have}")
    if have > expected:
        raise _damaged(file, f"is damaged: its header says {expected} bytes of tensor data, the file has {have} "
                             f"({have - expected} bytes too many)")
    return header, data_start


def index_shards(folder: Path) -> list[Path] | None:
    """The shard files ``model.safetensors.index.json`` lists (None without an index), each checked present.

    A shard name must stay in the folder: an absolute path or a ``..`` in a
    name is refused (a hostile index could otherwise make the export read any
    file).  Symbolic links are followed: the hub cache links every file of a
    snapshot to its blob store.  Raises :class:`ModelError` for an unreadable
    index, a name leaving the folder, or a listed shard that is missing.
    """
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise _damaged(index, f"is not a readable index ({' '.join(str(exc).split())})") from exc
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise _damaged(index, "has no weight_map of tensor names to shard files")
    names = sorted(set(weight_map.values()))
    leaving = [n for n in names if not n or Path(n).is_absolute() or ".." in Path(n).parts or "\\" in n]
    if leaving:
        raise ModelError(f"{index} names shard file(s) outside the checkpoint folder ({', '.join(map(repr, leaving))}); "
                         "optimum-wc reads only the files inside it. Fix the weight_map to plain file names of the "
                         f"folder (e.g. model-00001-of-00002.safetensors), or re-download the checkpoint.")
    files = [folder / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelError(f"{index} lists {', '.join(missing)}, missing from {folder}: the download is incomplete. "
                         f"Download the missing shard(s). {FIX}")
    return files


def checkpoint_weight_files(folder: Path) -> list[Path]:
    """The safetensors files a loader reads: the shards of the index, else ``model.safetensors``, else every one.

    Raises :class:`ModelError` for an unreadable index, a shard name leaving the folder or a listed shard missing.
    """
    folder = Path(folder)
    shards = index_shards(folder)
    if shards is not None:
        return shards
    single = folder / "model.safetensors"
    return [single] if single.is_file() else sorted(folder.glob("*.safetensors"))


def check_checkpoint_files(folder: str | Path) -> None:
    """Every safetensors weight file of the checkpoint ``folder`` is whole (see the module's rules).

    Raises :class:`~optimum_wc.errors.ModelError` naming the file, what is
    wrong with it and the fix (re-download or re-save).  A folder without
    safetensors files (``.bin`` weights) passes: nothing to check cheaply.
    """
    for file in checkpoint_weight_files(Path(folder)):
        check_safetensors_file(file)


def pickled_weight_files(folder: str | Path) -> list[Path]:
    """The pickled weight files a loader would open in ``folder``: its ``.bin``/``.pt``/``.pth``/``.ckpt`` files
    when it holds no safetensors weights (a loader prefers safetensors and then never opens a pickle)."""
    folder = Path(folder)
    if checkpoint_weight_files(folder):
        return []
    return sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file())


def check_pickled_weights(folder: str | Path, allow_pickle: bool = False) -> None:
    """Refuse a checkpoint whose weights are only pickled, unless the user opted in with ``allow_pickle``.

    Objective: nothing from a stranger's checkpoint runs as code by default.
    A pickle runs code when opened; Transformers opens ``pytorch_model.bin``
    with ``torch.load(weights_only=True)``, whose restricted unpickler is the
    only guard, so reading one is the user's explicit choice.
    """
    files = pickled_weight_files(folder)
    if files and not allow_pickle:
        names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise ModelError(
            f"{folder} holds its weights only as pickled files ({names}); optimum-wc reads safetensors by default, "
            "because opening a pickle can run code. Convert the checkpoint to safetensors (load it where you trust "
            "it and save_pretrained(..., safe_serialization=True)), or, if you trust its source, pass --allow-pickle "
            "(allow_pickle=True): it is then read with torch.load(weights_only=True)."
        )
