"""What an export cost the machine: peak memory and bytes read and written, from ``/proc/self``.

Objective: figures a user can compare with the machine's limits.  Peak
*anonymous* memory (``RssAnon``) is what cannot be paged out without swap;
peak RSS (``VmHWM``) also counts the memory-mapped checkpoint and IR pages,
which the kernel drops under pressure.  The kernel keeps no peak of
``RssAnon``, so a daemon thread samples it.  On systems without ``/proc``
the figures are None.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_IO = Path("/proc/self/io")
INTERVAL_S = 0.05


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _io() -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (line.split(": ") for line in _IO.read_text().splitlines())}
    except (OSError, ValueError):
        return {}


class ResourceMonitor:
    """Context manager: ``peak_anonymous_bytes``, ``peak_rss_bytes`` and I/O deltas of the ``with`` block."""

    def __init__(self, interval_s: float = INTERVAL_S):
        self.interval_s = interval_s
        self.peak_anon_kib = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io_start: dict[str, int] = {}
        self.figures: dict[str, Any] = {}

    def _sample(self) -> None:
        anon = _status_kib("RssAnon")
        if anon is not None and anon > self.peak_anon_kib:
            self.peak_anon_kib = anon

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "ResourceMonitor":
        self._io_start = _io()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="optimum-wc-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, **extra: Any) -> dict[str, Any]:
        """Stop sampling and return the figures (``extra`` added, e.g. the checkpoint bytes read)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()
            hwm = _status_kib("VmHWM")
            io = _io()
            delta = {k: io[k] - self._io_start.get(k, 0) for k in ("rchar", "wchar", "read_bytes", "write_bytes") if k in io}
            self.figures = {
                "peak_anonymous_bytes": self.peak_anon_kib * 1024 if self.peak_anon_kib else None,
                "peak_rss_bytes": hwm * 1024 if hwm is not None else None,
                "bytes_read": delta.get("rchar"),  # through read() calls, page cache included (not mmap)
                "bytes_written": delta.get("wchar"),
                "disk_bytes_read": delta.get("read_bytes"),  # that reached the storage layer
                "disk_bytes_written": delta.get("write_bytes"),
            }
        self.figures.update(extra)
        return self.figures



_PAGE = 4096


_MADV_DONTNEED = 4
_LIBC: Any = None


def release(array) -> None:
    """Unmap the pages of ``array`` (a view of a memory-mapped file) from this process; they stay in the page cache.

    Objective: pages of weights already compressed cost nothing to reclaim
    (no unmapping, no TLB shootdown on the compressing threads) when the
    checkpoint is larger than the memory.  Only pages of a read-only file
    mapping are released (their data is read again from the file on the next
    access); anything else, or a system without ``/proc/self/maps`` or libc,
    is left alone.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util

            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _LIBC = False
    nbytes = getattr(array, "nbytes", 0)
    if not _LIBC or nbytes < 2 * _PAGE:
        return
    import ctypes

    start = array.ctypes.data
    first = start + (-start) % _PAGE  # whole pages inside the array only
    last = (start + nbytes) - (start + nbytes) % _PAGE
    if last > first and _read_only_file_mapping(first, last):
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def _read_only_file_mapping(first: int, last: int) -> bool:
    """``[first, last)`` lies in one mapping of a file that this process cannot write (``/proc/self/maps``)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        begin, end = (int(x, 16) for x in fields[0].split("-"))
        if begin <= first and last <= end:
            return len(fields) >= 6 and fields[4] != "0" and "w" not in fields[1]
    return False


class SpillArena:
    """Room for arrays in an unlinked file, mapped: they live in the page cache, not in anonymous memory.

    Objective: results that must outlive their computation (the compressed
    constants of a data-aware compression, held until the model is saved)
    cost the process no anonymous memory whatever the model's size; the
    kernel writes their pages to the file and drops them under pressure.
    The file has no name, so nothing is left behind, even after a crash:
    its space returns when the arena is closed or the process ends.  Disk
    blocks are reserved as arrays arrive (``posix_fallocate``), so a full
    disk makes :meth:`put` decline (None) instead of giving a mapping that
    would fault later.
    """

    ALIGN = 64

    def __init__(self, directory: str | Path, capacity: int):
        import numpy as np

        fd, path = tempfile.mkstemp(prefix=".optimum-wc-spill-", dir=str(directory))
        try:
            os.unlink(path)
            self.capacity = max(int(capacity), mmap.PAGESIZE)
            os.ftruncate(fd, self.capacity)  # sparse: no disk used until written
            self._map = mmap.mmap(fd, self.capacity)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._buffer = np.frombuffer(self._map, dtype=np.uint8)
        self.used = 0

    def put(self, array):
        """``array``'s values in the arena (a view of the mapping), or None when there is no room (keep ``array``)."""
        import numpy as np

        array = np.ascontiguousarray(array)
        start = -(-self.used // self.ALIGN) * self.ALIGN
        if self._buffer is None or start + array.nbytes > self.capacity:
            return None
        try:
            os.posix_fallocate(self._fd, start, max(array.nbytes, 1))
        except OSError:
            return None
        view = self._buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
        view[...] = array
        self.used = start + array.nbytes
        return view

    def close(self) -> None:
        """Release the file (only once nothing uses the arrays put here: their memory goes away)."""
        self._buffer = None
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with the process
            pass
        os.close(self._fd)

    def __enter__(self) -> "SpillArena":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
