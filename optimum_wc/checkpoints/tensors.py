"""The tensors of a safetensors checkpoint, memory-mapped: read one without loading the others.

Objective: give the exporter any tensor of a (sharded) safetensors checkpoint
as a NumPy view of the file's pages, so a model of any size is read with
page-cache memory, which the kernel can drop, instead of anonymous memory.
The safetensors header is parsed here (8-byte little-endian length, then
JSON: ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, offsets
relative to the end of the header).  bfloat16 has no NumPy type; it is read
as ``uint16`` and flagged.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..layout import SAFETENSORS_INDEX

# safetensors dtype -> (NumPy dtype, torch dtype name); bfloat16 is stored as uint16.
DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("float64", "float64"),
    "F32": ("float32", "float32"),
    "F16": ("float16", "float16"),
    "BF16": ("uint16", "bfloat16"),
    "I64": ("int64", "int64"),
    "I32": ("int32", "int32"),
    "I16": ("int16", "int16"),
    "I8": ("int8", "int8"),
    "U8": ("uint8", "uint8"),
    "BOOL": ("bool", "bool"),
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: its file, dtype (safetensors name), shape and byte range in the file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def torch_dtype(self) -> str:
        return DTYPES[self.dtype][1]


def read_header(file: Path) -> dict[str, TensorInfo]:
    """The tensors of one ``.safetensors`` file (its ``__metadata__`` left out)."""
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ExportError(f"{file} is not a safetensors file (shorter than its 8-byte header length).")
        (length,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise ExportError(f"{file} has a corrupt safetensors header: {exc}; re-download or re-save it.") from exc
    base = 8 + length
    return {
        name: TensorInfo(file, meta["dtype"], tuple(meta["shape"]), base + meta["data_offsets"][0], base + meta["data_offsets"][1])
        for name, meta in header.items()
        if name != "__metadata__"
    }


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors shards (from the index when there is one), or [] when it has none."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    return sorted(folder.glob("*.safetensors"))


class CheckpointTensors:
    """Every tensor of a safetensors checkpoint folder, read on demand as memory-mapped NumPy views.

    ``bytes_read`` counts the bytes of the tensors handed out (each once).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.info: dict[str, TensorInfo] = {}
        for file in safetensors_files(self.folder):
            self.info.update(read_header(file))
        self._maps: dict[Path, np.memmap] = {}
        self._handed: set[str] = set()
        self.bytes_read = 0

    def __contains__(self, name: str) -> bool:
        return name in self.info

    def __len__(self) -> int:
        return len(self.info)

    def array(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a read-only view of the file (bfloat16 as uint16)."""
        info = self.info[name]
        if info.dtype not in DTYPES:
            raise ExportError(f"{info.file.name}: tensor {name} has dtype {info.dtype}, which optimum-wc cannot read.")
        mapped = self._maps.get(info.file)
        if mapped is None:
            mapped = self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
        if name not in self._handed:
            self._handed.add(name)
            self.bytes_read += info.nbytes
        return mapped[info.begin : info.end].view(DTYPES[info.dtype][0]).reshape(info.shape)

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.info.values())
