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



@functools.cache
def _kernels():
    """The compiled kernels (loaded from numba's cache after the first run); None when numba is not installed."""
    try:
        from . import numba_kernels as nk
    except ImportError:
        return None
    return nk.asym, nk.sym, nk.pack_codes, nk.grid_search


_WARMING: list = []


def warm_up() -> None:
    """Load the kernels on a background thread (once per process), so that the first quantization does not wait.

    Importing numba and loading the first cached kernel take about 0.3 s,
    once per process; the engine starts this when it is imported, so the
    load overlaps whatever the caller does next (exporting or reading the
    model).  A later call of a kernel simply waits for the load to finish.
    """
    if _WARMING:
        return
    import threading

    def load() -> None:
        loaded = _kernels()
        if loaded is not None:  # one call per kernel family: the first call of a cached numba function loads it
            w = np.zeros((1, 2), dtype=np.float32)
            quantize_rows(w, 4, True, True)
            quantize_rows(w, 4, False, False)

    thread = threading.Thread(target=load, name="optimum-wc-kernels", daemon=True)
    _WARMING.append(thread)
    thread.start()


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
    asym_kernel, sym_kernel, pack_codes, _ = _kernels()
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


def grid_search_rows(rows: np.ndarray, steps: np.ndarray, unfit: np.ndarray, rtn_scale: np.ndarray,
                     rtn_zp: np.ndarray | None, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """``mse_grid``'s search, one group per row of ``rows`` (float32 ``[groups, g]``, C-contiguous, finite).

    ``steps``/``unfit``: ``[groups, candidates]`` float32 steps and the ones
    to skip; ``rtn_scale``/``rtn_zp``: round to nearest's ``[groups]``
    parameters (zero point None when symmetric).  Returns the chosen scale
    and zero point (float32 integers) of each group, exactly as the NumPy
    reference of :func:`optimum_wc.quant.clipping.mse_grid_params` chooses them.
    """
    kernel = _kernels()[3]
    groups = rows.shape[0]
    scale = np.empty(groups, dtype=np.float32)
    zp = np.empty(groups, dtype=np.float32)
    z0 = np.zeros(groups, dtype=np.float32) if rtn_zp is None else rtn_zp.astype(np.float32)
    shifts = np.array([0.0] if rtn_zp is None else [-1.0, 0.0, 1.0], dtype=np.float32)
    kernel(rows, steps, unfit, rtn_scale.astype(np.float32), z0, np.float32(low), np.float32(high), shifts, scale, zp)
    return scale, zp
