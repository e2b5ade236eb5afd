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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExportError
from .integrity import checked_safetensors_header, index_shards

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
    """The tensors of one ``.safetensors`` file (its ``__metadata__`` left out; a damaged header raises ModelError).

    The header is checked against the file first: a shape or byte range the
    file cannot hold is refused here, never met later as a huge allocation
    or a read past the end.
    """
    header, base = checked_safetensors_header(file)
    return {
        name: TensorInfo(file, meta["dtype"], tuple(meta["shape"]), base + meta["data_offsets"][0], base + meta["data_offsets"][1])
        for name, meta in header.items()
        if name != "__metadata__"
    }


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors shards (from the index when there is one), or [] when it has none."""
    shards = index_shards(folder)
    return shards if shards is not None else sorted(folder.glob("*.safetensors"))


_ALIGN = 4096  # O_DIRECT: offsets, sizes and memory aligned to this


def _read_into(file: Path, view: memoryview, offset: int, needed: int, direct: bool) -> None:
    """Fill ``view`` from ``file`` at ``offset`` until at least ``needed`` bytes are in (the file may end before)."""
    import os

    flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0)
    if direct and not flags & getattr(os, "O_DIRECT", 0):
        raise OSError("O_DIRECT is not available here")
    fd = os.open(file, flags)
    try:
        done = 0
        while done < needed:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise ExportError(f"{file} ends inside a tensor: the file is truncated; re-download it.")
            done += n
    finally:
        os.close(fd)


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
        info = self._readable(name)
        mapped = self._maps.get(info.file)
        if mapped is None:
            mapped = self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
        self._count(name)
        return mapped[info.begin : info.end].view(DTYPES[info.dtype][0]).reshape(info.shape)

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor ``name`` read into memory with ``pread`` (bfloat16 as uint16), bypassing the page cache.

        Objective: the fastest way here from disk to memory.  Faulting pages
        of a mapping in one by one costs several times more than large reads
        (measured: 4 GiB cold, 3.5 s through the mapping, 0.5 s with
        ``readinto``), and a buffered read still copies every byte out of the
        page cache (where a checkpoint larger than the memory also makes the
        kernel reclaim pages for every new allocation).  So the file is read
        with ``O_DIRECT`` into an aligned buffer, straight from the disk,
        falling back to a buffered read where the file system refuses it.
        ``out``: a uint8 buffer of at least :meth:`buffer_bytes` to read into
        (fresh memory costs the kernel a page clearing per page; a reused
        buffer does not).  The result is a view of it.
        """
        info = self._readable(name)
        if out is None or out.nbytes < self.buffer_bytes(name):
            out = np.empty(self.buffer_bytes(name), dtype=np.uint8)
        skip = (-out.ctypes.data) % _ALIGN  # the first aligned byte of the buffer
        start = info.begin - info.begin % _ALIGN
        length = -(-(info.end - start) // _ALIGN) * _ALIGN
        view = memoryview(out)[skip : skip + length]
        try:
            _read_into(info.file, view, start, info.end - start, direct=True)
            data = out[skip + info.begin - start : skip + info.end - start]
        except OSError:
            view = memoryview(out)[: info.nbytes]
            _read_into(info.file, view, info.begin, info.nbytes, direct=False)
            data = out[: info.nbytes]
        self._count(name)
        return data.view(DTYPES[info.dtype][0]).reshape(info.shape)

    def _readable(self, name: str) -> TensorInfo:
        info = self.info[name]
        if info.dtype not in DTYPES:
            raise ExportError(f"{info.file.name}: tensor {name} has dtype {info.dtype}, which optimum-wc cannot read; "
                              f"it reads {', '.join(DTYPES)}. Save the checkpoint with one of them.")
        return info

    def buffer_bytes(self, name: str) -> int:
        """The size of a buffer :meth:`read` can read tensor ``name`` into."""
        return self.info[name].nbytes + 3 * _ALIGN

    def _count(self, name: str) -> None:
        """Add tensor ``name``'s bytes to ``bytes_read`` the first time it is handed out."""
        if name not in self._handed:
            self._handed.add(name)
            self.bytes_read += self.info[name].nbytes

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.info.values())
