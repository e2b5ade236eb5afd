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

_EPS = float(np.finfo(np.float32).eps)
SCALE_PLAIN, SCALE_MX, SCALE_CODEBOOK = 0, 1, 2
KIND_THRESHOLDS, KIND_E2M1, KIND_E4M3 = 0, 1, 2


@functools.cache
def _kernel():
    """Compile (or load from numba's cache) the kernel; None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None
    import math

    # "no NaN / no inf" lets the loops vectorise (the caller checks the block is finite); no reassociation, no
    # reciprocal, no signed-zero liberties: the scale arithmetic and every comparison stay as written
    jit = numba.njit(nogil=True, cache=True, fastmath={"nnan", "ninf"}, boundscheck=False)

    @jit
    def e4m3_magnitude(a, bits):
        """E4M3 magnitude code of ``a = |x|`` (its float32 bits ``bits``): round to float16, then to E4M3."""
        if bits < 0x38800000:  # below float16's smallest normal: its subnormal grid, 2^-24
            h = np.int64(np.rint(a * np.float32(16777216.0)))
        else:  # float16 normal: keep 10 of 23 mantissa bits, ties to even
            h = (np.int64(bits) >> 13) - (112 << 10)
            rem = bits & 0x1FFF
            if rem > 0x1000 or (rem == 0x1000 and (h & 1)):
                h += 1
        if h < 0x2400:  # below E4M3's smallest normal 2^-6: its subnormal grid, 2^-9 (exact in float64)
            value = h * 2.0**-24 if h < 0x400 else (1024 + (h & 0x3FF)) * 2.0 ** ((h >> 10) - 25)
            return np.int64(np.rint(value * 512.0))
        code = (h - (8 << 10)) >> 7  # rebias 15 -> 7, keep 3 of 10 mantissa bits, ties to even
        rem = h & 0x7F
        if rem > 0x40 or (rem == 0x40 and (code & 1)):
            code += 1
        return min(code, 0x7F)  # above 448 (from 464 on): NaN

    @jit
    def encode_rows(w, sign_bits, kind, scale_rule, max_value, thresholds, values, codes, scale, err, row):
        """Group scale, codes and error of each row of ``w`` (see the module docstring); ``row``: scratch [g]."""
        groups, g = w.shape
        row_bits = row.view(np.uint32)
        eps = np.float32(_EPS)
        one = np.float32(1.0)
        n = thresholds.size
        for r in range(groups):
            top = np.float32(0.0)
            for k in range(g):
                top = max(top, abs(w[r, k]))
            if scale_rule == SCALE_CODEBOOK:
                s = top / max_value
                if abs(s) < eps:
                    s = eps
            else:
                s = top if top >= eps else eps
                if max_value != one:
                    s = s / max_value
                if scale_rule == SCALE_MX:
                    m, e = math.frexp(np.float64(s))
                    exp = min(max(e - 1 if m == 0.5 else e, -127), 127)
                    s = np.float32(math.ldexp(1.0, exp))
            scale[r] = s
            for k in range(g):
                row[k] = w[r, k] / s
            for k in range(g):
                x = row[k]
                sign = np.int64(sign_bits[r, k] >> np.uint32(31))
                if kind == KIND_E4M3:
                    c = e4m3_magnitude(abs(x), np.int64(row_bits[k] & np.uint32(0x7FFFFFFF))) | (sign << 7)
                elif kind == KIND_E2M1:
                    a = abs(x)
                    c = np.int64(0)
                    for i in range(n):
                        c += a >= thresholds[i]
                    c |= sign << 3
                else:
                    c = np.int64(0)
                    for i in range(n):
                        c += x >= thresholds[i]
                codes[r, k] = np.uint8(c)
                err[r, k] = values[c] * s - w[r, k]

    return encode_rows


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
                boundaries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes ``[groups, g]`` (uint8), scales ``[groups]`` and the flat error of a finite float32 block."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    kind = {"f4e2m1": KIND_E2M1, "f8e4m3": KIND_E4M3}.get(code_type, KIND_THRESHOLDS)
    t = np.zeros(1, np.float32) if kind == KIND_E4M3 else thresholds(code_type, boundaries)[0]
    codes = np.empty(w.shape, dtype=np.uint8)
    scale = np.empty(w.shape[0], dtype=np.float32)
    err = np.empty(w.shape, dtype=np.float32)
    _kernel()(w, w.view(np.uint32), kind, scale_rule, np.float32(max_value), t,
              np.ascontiguousarray(values, dtype=np.float32), codes, scale, err, np.empty(w.shape[1], np.float32))
    return codes, scale, err.reshape(-1)
