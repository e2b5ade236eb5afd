"""Data-free clipping: each group's quantization range shrunk to the one with the smallest squared weight error.

Round to nearest maps a group's full range ``[min, max]`` onto the integer
grid, so one outlier weight stretches the step for all the others.  For
each group this tries the range scaled by ``alpha`` for every ``alpha`` of
:data:`CLIP_GRID` (20 steps from 1 down to 1/2, the grid of AWQ's clipping
search, here judged without data) and keeps the one whose round-to-nearest
result has the smallest ``sum (w - deq(q(w)))^2``:

* asymmetric: ``lo = alpha min(min w, 0)``, ``hi = alpha max(max w, 0)``,
  then RTN's scale and zero point for ``[lo, hi]``;
* symmetric: RTN's scale times ``alpha``.

``alpha = 1`` is RTN itself and wins ties, so no group's weight error is
larger than RTN's.  Pure NumPy, one block of groups at a time.
"""

from __future__ import annotations

import numpy as np

from ..config import CompressWeightsMode
from .rtn import asymmetric_params, quantization_params, rounded_levels

CLIP_GRID = tuple(1.0 - 0.5 * i / 20 for i in range(20))  # 1.0, 0.975, ..., 0.525


def _group_error(w: np.ndarray, axis: int, scale: np.ndarray, zp: np.ndarray | None,
                 mode: CompressWeightsMode) -> np.ndarray:
    q = rounded_levels(w, scale, zp, mode)
    if zp is not None:
        q -= zp.astype(np.float32)
    q *= scale
    q -= w
    return np.sum(np.square(q, dtype=np.float64), axis=axis, keepdims=True)  # float64: no near-tie flips


def mse_clipped_params(w: np.ndarray, axis: int, mode: CompressWeightsMode) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale and zero point (keepdims along ``axis``) of the clipped range with the smallest weight error per group."""
    w = np.asarray(w, dtype=np.float32)
    scale, zp = quantization_params(w, axis, mode)
    full = scale  # RTN's scale, the one every alpha shrinks (``scale`` becomes the best so far)
    best = _group_error(w, axis, scale, zp, mode)
    ends = np.concatenate([np.minimum(np.min(w, axis=axis, keepdims=True), np.float32(0)),
                           np.maximum(np.max(w, axis=axis, keepdims=True), np.float32(0))], axis=axis)
    for alpha in CLIP_GRID[1:]:
        if mode.is_asym:  # RTN's parameters of the range [alpha lo, alpha hi]
            s, z = asymmetric_params(ends * np.float32(alpha), axis, mode.num_bits)
        else:
            s, z = (full * np.float32(alpha)).astype(np.float32), None
        err = _group_error(w, axis, s, z, mode)
        better = err < best
        if np.any(better):
            best = np.where(better, err, best)
            scale = np.where(better, s, scale)
            if zp is not None:
                zp = np.where(better, z, zp)
    return scale, zp
