"""Data-free choices of each group's quantization range other than round to nearest's.

:func:`mse_clipped_params` (``mse_clipping``): the range shrunk to the one with the smallest squared weight error.
:func:`full_range_params` (``full_range``): the smallest asymmetric step whose grid covers the whole range
(round to nearest's rounded zero point clips one end).
:func:`mse_grid_params` (``mse_grid``): the step and zero point with the smallest squared weight error among the
grids that keep each group's extreme weights as well as round to nearest does.

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
from . import kernels
from .rtn import _EPS, asymmetric_params, levels, quantization_params, rounded_levels

MSE, FULL, GRID = "mse", "full", "grid"  # the range rules :func:`range_params` knows (None: round to nearest's own)

CLIP_GRID = tuple(1.0 - 0.5 * i / 20 for i in range(20))  # 1.0, 0.975, ..., 0.525


def _rounding_error(w: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, mode: CompressWeightsMode) -> np.ndarray:
    """``deq(q(w)) - w`` in float32: ``(q - zp) * scale - w``, in that order."""
    q = rounded_levels(w, scale, zp, mode)
    if zp is not None:
        q -= zp.astype(np.float32)
    q *= scale
    q -= w
    return q


def _group_error(w: np.ndarray, axis: int, scale: np.ndarray, zp: np.ndarray | None,
                 mode: CompressWeightsMode) -> np.ndarray:
    q = _rounding_error(w, scale, zp, mode)
    return np.sum(np.square(q, dtype=np.float64), axis=axis, keepdims=True)  # float64: no near-tie flips


def _keep_better(err, best, s, z, scale, zp):
    """Per group, the candidate ``(s, z)`` where its error is strictly below the best so far (ties keep the earlier)."""
    better = err < best
    if not np.any(better):
        return best, scale, zp
    zp = None if zp is None else np.where(better, z, zp)
    return np.where(better, err, best), np.where(better, s, scale), zp


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
        best, scale, zp = _keep_better(_group_error(w, axis, s, z, mode), best, s, z, scale, zp)
    return scale, zp


def _f16_at_least(s: np.ndarray) -> np.ndarray:
    """The smallest float16 value ``>= s`` (as float64), so a range covered in float32 stays covered in the IR."""
    s16 = s.astype(np.float16)
    below = s16.astype(np.float64) < s
    return np.where(below, np.nextafter(s16, np.float16(np.inf)), s16).astype(np.float64)


def full_range_params(w: np.ndarray, axis: int, num_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric scale and integer zero point whose grid covers each group's range with the smallest step.

    Objective: no weight clipped, the largest-magnitude weights kept at their
    magnitude.  Round to nearest maps ``[lo, hi] = [min(w, 0), max(w, 0)]``
    onto ``[0, 2^b - 1]`` with step ``s0 = (hi - lo) / (2^b - 1)`` and
    *rounds* the zero point ``-lo / s0``: its grid ``[-z s0, (2^b - 1 - z) s0]``
    is shifted by up to half a step, so one end of the range is clipped and
    that end's extreme weights are pulled towards zero by up to ``s0 / 2``
    (a systematic shrink of the largest weights, the ones a layer's output
    depends on most; shrinking ranges further, :func:`mse_clipped_params`,
    is what this avoids).  Here, for an integer ``z`` the smallest step whose
    grid contains the range is ``s(z) = max(hi / (2^b - 1 - z), -lo / z)``,
    smallest at ``z`` beside ``-lo / s0`` (one term rises with ``z``, the
    other falls): of floor and ceiling, the smaller ``s(z)``, rounded up to
    float16 (the IR's scale type).  Every weight stays within half a step;
    the step grows by at most ``1 / (2^b - 2)`` over round to nearest's.
    """
    w = np.asarray(w, dtype=np.float32)
    n = float(2**num_bits - 1)
    lo = np.minimum(np.min(w, axis=axis, keepdims=True), np.float32(0)).astype(np.float64)
    hi = np.maximum(np.max(w, axis=axis, keepdims=True), np.float32(0)).astype(np.float64)
    s0 = np.maximum((hi - lo) / n, _EPS)
    best_s = best_z = None
    for z in (np.floor(-lo / s0), np.ceil(-lo / s0)):
        z = np.clip(z, 0, n)
        above = np.where(z < n, hi / np.maximum(n - z, 1), np.where(hi > 0, np.inf, 0.0))  # z = n: no level above 0
        below = np.where(z > 0, -lo / np.maximum(z, 1), np.where(lo < 0, np.inf, 0.0))  # z = 0: none below 0
        step = np.maximum(above, below)
        step = _f16_at_least(np.maximum(step, _EPS))
        if best_s is None:
            best_s, best_z = step, z
        else:
            take = step < best_s
            best_s, best_z = np.where(take, step, best_s), np.where(take, z, best_z)
    ok = np.isfinite(best_s)  # a range beyond float16 (or hi = lo = 0 edge cases): round to nearest's parameters
    if np.all(ok):  # the usual case: no second pass over the weights for RTN's parameters
        return best_s.astype(np.float32), best_z.astype(np.uint8)
    rtn_scale, rtn_zp = asymmetric_params(w, axis, num_bits)
    return np.where(ok, best_s, rtn_scale).astype(np.float32), np.where(ok, best_z, rtn_zp).astype(np.uint8)


def grid_steps(num_bits: int) -> tuple[float, ...]:
    """The step factors :func:`mse_grid_params` tries: ``1 + k / (4 n)`` for ``k = -4 .. 12``, ``n = 2^b - 1``.

    Below ``1 - 1/n`` the grid spans less than the range by more than one
    step of round to nearest, so one of the group's ends would be off by more
    than half a step (which the search forbids anyway).  The largest,
    ``1 + 3/n`` (1.2 at 4 bits), already raises every weight's typical
    rounding error (proportional to the step) by a fifth at 4 bits; trying
    up to 1.3 gained nothing more on SmolLM2.
    """
    n = 2**num_bits - 1
    return tuple(1.0 + k / (4.0 * n) for k in range(-4, 13))


def _extreme_error(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, mode: CompressWeightsMode) -> np.ndarray:
    """``|deq(q(x)) - x|`` for one value ``x`` per group (the group's minimum or maximum weight)."""
    return np.abs(_rounding_error(x, scale, zp, mode)).astype(np.float64)


def mse_grid_params(w: np.ndarray, axis: int, mode: CompressWeightsMode,
                    fused: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale and zero point with the smallest squared weight error among grids that keep each group's extremes.

    Objective, per group: ``min sum (w - deq(q(w)))^2`` over step ``s`` and
    integer zero point ``z``, subject to the group's smallest and largest
    weight each being represented no worse than round to nearest represents
    it (error at most ``max(s0 / 2, rtn_error)``, ``s0`` its step).  The
    constraint is what separates this from :func:`mse_clipped_params`: the
    least-squares step of a heavy-tailed group clips its extreme weights,
    the ones a layer's output depends on most, and measured on a real model
    that costs more than the smaller mean error gains; moving the grid
    (a slightly larger or smaller step, the neighbouring zero points) while
    keeping the ends costs nothing there.  Candidates: the steps
    ``s0 * f`` for ``f`` in :func:`grid_steps` rounded to float16 (the IR's
    scale type, so the error judged is the IR's own), each with the zero
    points ``round(-lo / s)`` and its two neighbours (asymmetric modes).
    Round to nearest's own parameters come first and win ties, so no group's
    squared error is larger than round to nearest's.  Each group's error is
    summed in float64 in one fixed order, by the numba kernel with ``fused``
    (:func:`optimum_wc.quant.kernels.grid_search_rows`, finite weights) or
    by the NumPy reference here: both choose the same grid.
    """
    w = np.asarray(w, dtype=np.float32)
    out_shape = w.shape[:axis] + (1,) + w.shape[axis + 1 :]
    rows = np.ascontiguousarray(np.moveaxis(w, axis, -1)).reshape(-1, w.shape[axis])  # one group per row
    rtn_scale, rtn_zp = quantization_params(rows, 1, mode)
    factors = np.asarray(grid_steps(mode.num_bits), dtype=np.float32)
    with np.errstate(over="ignore"):
        steps = (rtn_scale * factors).astype(np.float16).astype(np.float32)  # [groups, candidates]
    unfit = ~np.isfinite(steps) | (np.abs(steps) < _EPS)  # beyond float16's range, or below eps: not a candidate
    steps = np.where(unfit, rtn_scale, steps)
    if fused and kernels.available() and np.isfinite(np.dot(rows.ravel(), rows.ravel())):
        low, high = levels(mode)
        scale, zp = kernels.grid_search_rows(rows, steps, unfit, rtn_scale[:, 0], None if rtn_zp is None else rtn_zp[:, 0],
                                             low, high)
        zp = None if rtn_zp is None else zp.astype(np.uint8)
    else:
        scale, zp = _grid_search_reference(rows, steps, unfit, rtn_scale, rtn_zp, mode)
    return scale.reshape(out_shape).astype(np.float32), None if zp is None else zp.reshape(out_shape)


def _row_errors_in_order(rows: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, mode: CompressWeightsMode) -> np.ndarray:
    """Each row's ``sum (deq(q(w)) - w)^2``: float32 terms, float64 squares, in the kernel's order (8 lanes, then
    pairwise: lane ``k % 8`` sums element ``k`` in element order)."""
    sq = np.square(_rounding_error(rows, scale, zp, mode), dtype=np.float64)
    lanes = np.zeros((rows.shape[0], 8), dtype=np.float64)
    for k in range(rows.shape[1]):  # element k into lane k % 8, each lane in element order
        lanes[:, k % 8] += sq[:, k]
    return (((lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3]))
            + ((lanes[:, 4] + lanes[:, 5]) + (lanes[:, 6] + lanes[:, 7])))[:, None]


def _grid_search_reference(rows, steps, unfit, rtn_scale, rtn_zp, mode):
    """:func:`mse_grid_params`'s search in NumPy, one candidate at a time over all groups (``[groups, 1]`` results)."""
    scale, zp = rtn_scale, rtn_zp
    best = _row_errors_in_order(rows, scale, zp, mode)
    w_min, w_max = np.min(rows, axis=1, keepdims=True), np.max(rows, axis=1, keepdims=True)
    half = np.abs(rtn_scale).astype(np.float64) / 2
    bound_min = np.maximum(half, _extreme_error(w_min, scale, zp, mode)) * (1 + 1e-6)
    bound_max = np.maximum(half, _extreme_error(w_max, scale, zp, mode)) * (1 + 1e-6)
    n = 2**mode.num_bits - 1
    lo = np.minimum(w_min, np.float32(0))
    for j in range(steps.shape[1]):
        s = steps[:, j : j + 1]
        if mode.is_asym:
            z0 = np.rint(-lo / s)
            zs = [np.clip(z0 + d, 0, n).astype(np.uint8) for d in (-1, 0, 1)]
        else:
            zs = [None]
        for z in zs:
            ok = (_extreme_error(w_min, s, z, mode) <= bound_min) & (_extreme_error(w_max, s, z, mode) <= bound_max)
            ok &= ~unfit[:, j : j + 1]
            if not np.any(ok):
                continue
            err = np.where(ok, _row_errors_in_order(rows, s, z, mode), np.inf)
            best, scale, zp = _keep_better(err, best, s, z, scale, zp)
    return scale, zp


def range_params(w: np.ndarray, axis: int, mode: CompressWeightsMode, rule: str,
                 fused: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale and zero point of ``w`` along ``axis`` (keepdims) under the range ``rule`` (:data:`MSE`, :data:`FULL`, :data:`GRID`)."""
    if rule == MSE:
        return mse_clipped_params(w, axis, mode)
    if rule == GRID:
        return mse_grid_params(w, axis, mode, fused)
    if rule == FULL and mode.is_asym:
        return full_range_params(w, axis, mode.num_bits)
    raise ValueError(f"no range rule {rule!r} for {mode.value}")
