"""Fused round-to-nearest kernels (numba): one pass over a block of rows instead of about ten NumPy passes.

Objective: for a float32 block ``w`` of shape ``[rows, groups * g]`` reduced
over each run of ``g`` elements, produce exactly what the NumPy reference of
:mod:`optimum_wc.quant.lowering` produces, element for element (the same
float32 operations in the same order, no fast-math, no contraction into FMA):

* asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``,
  ``s = (hi - lo) / (2^b - 1)`` (eps if smaller), ``z = clip(-rint(lo / s), 0, 2^b - 1)``,
  ``q = clip(rint(w / s + z), 0, 2^b - 1)``, error ``(q - z) * s - w``;
* symmetric: ``s = (|min| if |min| >= max else -max) / 2^(b-1)`` (eps if
  smaller in magnitude), ``q = clip(rint(w / s), -2^(b-1), 2^(b-1) - 1)``,
  error ``q * s - w``.

Codes go out as bytes, or packed two per byte (element 0 in the low nibble)
for 4-bit modes; the error goes to a float32 buffer so that the caller sums
it with NumPy's own ``dot``, in the reference's order.  The kernels assume
finite weights: the caller checks the block's squared norm and takes the
reference path (NumPy's NaN and inf semantics) when it is not finite.

numba is optional: :func:`available` says whether the kernels can run.
"""

from __future__ import annotations

import functools

import numpy as np

_EPS = float(np.finfo(np.float32).eps)


@functools.cache
def _kernels():
    """Compile (or load from numba's cache) the kernels; None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None
    # No reassociation, no reciprocal division, no FMA contraction: every float32 operation stays as written.
    # "no NaN / no inf / no signed zero" only lets the min/max loops vectorise; the caller checks the
    # block is finite (through its squared norm) and takes the reference path otherwise.
    jit = numba.njit(nogil=True, cache=True, fastmath={"nnan", "ninf", "nsz"}, boundscheck=False)

    @jit
    def pack_codes(codes, packed):
        """Two codes per byte, element 0 in the low nibble (an odd last code gets a zero high nibble)."""
        n = codes.size
        for i in range(n // 2):
            packed[i] = (codes[2 * i] & np.uint8(0x0F)) | ((codes[2 * i + 1] & np.uint8(0x0F)) << np.uint8(4))
        if n % 2:
            packed[n // 2] = codes[n - 1] & np.uint8(0x0F)

    @jit
    def row_min_max(w, r, low, high, scratch_low, scratch_high):
        """``min(low, min w[r])`` and ``max(high, max w[r])``; long rows are halved in scratch (vector loops)."""
        g = w.shape[1]
        if g < 256:
            for k in range(g):
                low = min(low, w[r, k])
                high = max(high, w[r, k])
            return low, high
        p = 1
        while p * 2 <= g:
            p *= 2
        for j in range(p):
            scratch_low[j] = w[r, j]
            scratch_high[j] = w[r, j]
        for j in range(g - p):  # unsigned indices: no negative-index wrap-around, so the loop vectorises
            u = np.uint64(p + j)
            scratch_low[j] = min(scratch_low[j], w[r, u])
            scratch_high[j] = max(scratch_high[j], w[r, u])
        while p > 1:
            p //= 2
            for j in range(p):
                u = np.uint64(p + j)
                scratch_low[j] = min(scratch_low[j], scratch_low[u])
                scratch_high[j] = max(scratch_high[j], scratch_high[u])
        return min(low, scratch_low[0]), max(high, scratch_high[0])

    @jit
    def asym(w, high, codes, scale, zp, err, scratch_low, scratch_high):
        groups, g = w.shape
        eps = np.float32(_EPS)
        zero = np.float32(0.0)
        fhigh = np.float32(high)
        for r in range(groups):
            lo, hi = row_min_max(w, r, zero, zero, scratch_low, scratch_high)
            s = (hi - lo) / fhigh
            if abs(s) < eps:
                s = eps
            z = zero - np.float32(np.rint(lo / s))
            z = min(max(z, zero), fhigh)
            scale[r] = s
            zp[r] = np.uint8(z)
            for k in range(g):
                v = w[r, k]
                q = np.float32(np.rint(v / s + z))
                q = min(max(q, zero), fhigh)
                codes[r, k] = np.uint8(np.int32(q))
                err[r, k] = (q - z) * s - v

    @jit
    def sym(w, num_bits, codes, scale, err, scratch_low, scratch_high):
        groups, g = w.shape
        eps = np.float32(_EPS)
        half = np.float32(2 ** (num_bits - 1))
        low = -half
        high = half - np.float32(1.0)
        for r in range(groups):
            mn, mx = row_min_max(w, r, w[r, 0], w[r, 0], scratch_low, scratch_high)
            amin = abs(mn)
            s = amin if amin >= mx else -mx
            s = s / half
            if abs(s) < eps:
                s = eps
            scale[r] = s
            for k in range(g):
                v = w[r, k]
                q = np.float32(np.rint(v / s))
                q = min(max(q, low), high)
                codes[r, k] = np.uint8(np.int32(q))
                err[r, k] = q * s - v

    return asym, sym, pack_codes


def available() -> bool:
    """True when numba is installed and the fused kernels can run."""
    return _kernels() is not None


def quantize_rows(w: np.ndarray, num_bits: int, asym: bool, pack: bool):
    """Round ``w`` (float32 ``[groups, g]``, C-contiguous, finite) to nearest, one scale per row.

    Returns ``(codes_or_packed, scale, zero_point, err)``: ``codes`` flat
    (uint8, or int8 when symmetric; with ``pack``, uint8 of half the size),
    ``scale`` and ``zero_point`` of ``[groups]`` (zero point None when
    symmetric) and ``err`` the flat float32 error ``deq(q) - w``.  For a
    block that is not finite the result is unspecified: check first.
    """
    asym_kernel, sym_kernel, pack_codes = _kernels()
    groups, g = w.shape
    codes = np.empty(w.shape, dtype=np.uint8)
    scale = np.empty(groups, dtype=np.float32)
    err = np.empty(w.shape, dtype=np.float32)
    scratch = np.empty((2, g), dtype=np.float32)
    zp = None
    if asym:
        zp = np.empty(groups, dtype=np.uint8)
        asym_kernel(w, 2**num_bits - 1, codes, scale, zp, err, scratch[0], scratch[1])
    else:
        sym_kernel(w, num_bits, codes, scale, err, scratch[0], scratch[1])
    codes = codes.reshape(-1)
    if pack:
        out = np.empty((codes.size + 1) // 2, dtype=np.uint8)
        pack_codes(codes, out)
    else:
        out = codes if asym else codes.view(np.int8)
    return out, scale, zp, err.reshape(-1)
