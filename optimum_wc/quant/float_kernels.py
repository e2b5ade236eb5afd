"""Fused kernels (numba) for the float formats and codebooks: one pass per block of rows.

Objective: for a finite float32 block ``w`` of shape ``[groups, g]`` (one
group per row), produce exactly the codes, scales and error of the NumPy
reference (:mod:`.float_lowering` with :mod:`.minifloat`), element for
element: the same float32 scale arithmetic in the same order, each
element's code by the same rounding rule, the error ``values[code] * s - w``
in float32 (summed by the caller with NumPy's ``dot``, in the reference's
order).

Every element encoding is monotone in the value (in its magnitude, for the
formats with a sign bit), so it is a count of *thresholds*: ``T_i`` is the
smallest float32 that the reference encoder maps above code ``i``, and the
code of ``a`` is ``#{i : T_i <= a}`` (a binary search), plus the sign bit
of ``w`` for E2M1 and E4M3.  :func:`thresholds` finds ``T`` from the
reference encoders themselves (bisection over float32 bit patterns), so the
kernel cannot disagree with them.  The caller checks the block is finite
and takes the reference path when it is not.  numba is optional:
:func:`available` says whether the kernel runs.
"""

from __future__ import annotations

import functools

import numpy as np

from . import minifloat
from .kernel_flags import (  # noqa: F401 (the flags callers pass)
    KIND_E2M1,
    KIND_E4M3,
    KIND_THRESHOLDS,
    SCALE_CODEBOOK,
    SCALE_GIVEN,
    SCALE_MX,
    SCALE_PLAIN,
    SCALE_SIGNED,
)


@functools.cache
def _kernel():
    """The compiled kernel (loaded from numba's cache after the first run); None when numba is not installed."""
    try:
        from . import numba_kernels
    except ImportError:
        return None
    return numba_kernels.encode_rows


def available() -> bool:
    """True when numba is installed and the kernel can run."""
    return _kernel() is not None


def _smallest_above(encode, codes: np.ndarray, limit: float) -> np.ndarray:
    """For each code ``c``, the smallest float32 ``a`` in [0, limit] with ``encode(a) > c`` (bisection on bits)."""
    lo = np.zeros(codes.size, dtype=np.int64)  # bit patterns of non-negative float32 are ordered like the values
    hi = np.full(codes.size, np.float32(limit).view(np.int32), dtype=np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        above = encode(mid.astype(np.int32).view(np.float32)) > codes
        active = lo < hi
        hi = np.where(active & above, mid, hi)
        lo = np.where(active & ~above, mid + 1, lo)
    return lo.astype(np.int32).view(np.float32)


@functools.cache
def _e2m1_thresholds() -> np.ndarray:
    return _smallest_above(lambda a: minifloat.e2m1_codes(a) & 7, np.arange(7), 7.0)


def thresholds(code_type: str, boundaries: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The thresholds ``T`` and the sign bit (-1: none) of E2M1, NF4 or a codebook (``boundaries``: NF4's or its)."""
    if code_type == "f4e2m1":
        return _e2m1_thresholds(), 3
    # nearest entry, a tie taking the lower one: above code i from the first float32 past boundary i
    return np.nextafter(np.asarray(boundaries, np.float32), np.float32(np.inf)).astype(np.float32), -1


def encode_rows(w: np.ndarray, code_type: str, scale_rule: int, max_value: float, values: np.ndarray,
                boundaries: np.ndarray | None = None, scale: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes ``[groups, g]`` (uint8), scales ``[groups]`` and the flat error of a finite float32 block.

    With ``scale_rule == SCALE_GIVEN``, ``scale`` ([groups], float32) is used as it is.
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    kind = {"f4e2m1": KIND_E2M1, "f8e4m3": KIND_E4M3}.get(code_type, KIND_THRESHOLDS)
    t = np.zeros(1, np.float32) if kind == KIND_E4M3 else thresholds(code_type, boundaries)[0]
    codes = np.empty(w.shape, dtype=np.uint8)
    scale = np.array(scale, dtype=np.float32).reshape(-1) if scale_rule == SCALE_GIVEN else np.empty(w.shape[0], np.float32)
    err = np.empty(w.shape, dtype=np.float32)
    _kernel()(w, w.view(np.uint32), kind, scale_rule, np.float32(max_value), t,
              np.ascontiguousarray(values, dtype=np.float32), codes, scale, err, np.empty(w.shape[1], np.float32))
    return codes, scale, err.reshape(-1)
