"""A bounded, order-keeping thread map: NumPy maths of the next items overlaps with graph edits of this one."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator

AHEAD = 2  # items whose maths runs on the pool while the caller handles the current one
_POOL: ThreadPoolExecutor | None = None


def in_order(fn: Callable[[Any], Any], items: Iterable[Any], ahead: int = AHEAD) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in the order of ``items``, with up to ``ahead`` calls running on a thread pool.

    NumPy releases the GIL in its loops, so the maths of two items overlaps;
    results come back in order, so whatever the caller does with them (graph
    edits) stays deterministic.  ``items`` is consumed lazily: at most
    ``ahead + 1`` items are held, and item ``k + ahead`` is drawn only after
    the caller has handled item ``k - 1``.

    Close it (``contextlib.closing``) when the caller stops early (an error,
    Ctrl-C): closing cancels the calls not started and waits for the running
    ones, which may read memory the caller frees next (a checkpoint's memory
    map, a spill file); a call still running on it would crash the process.
    """
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=AHEAD, thread_name_prefix="optimum-wc-layer")
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, _POOL.submit(fn, item)))
            if len(pending) > ahead:
                yield _first_result(pending)
        while pending:
            yield _first_result(pending)
    finally:
        for _, future in pending:
            future.cancel()
        wait([future for _, future in pending])


def _first_result(pending: deque) -> tuple[Any, Any]:
    """The first pending item and its result, removed from ``pending`` only once done (an interrupt while waiting
    leaves it there, for the clean-up to wait on)."""
    head, future = pending[0]
    result = future.result()
    pending.popleft()
    return head, result
