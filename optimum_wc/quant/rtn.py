"""Round to nearest on an integer grid: NNCF's scale and zero-point formulas, as small pure NumPy functions.

For a weight reduced along ``axis`` (per output channel, or per group), in float32:

* symmetric (b bits): ``s = signed_absmax(W) / 2^(b-1)``,
  ``q = clip(round(W / s), -2^(b-1), 2^(b-1) - 1)``;
* asymmetric: ``lo = min(min W, 0)``, ``hi = max(max W, 0)``,
  ``s = (hi - lo) / (2^b - 1)``, ``z = clip(-round(lo / s), 0, 2^b - 1)``,
  ``q = clip(round(W / s + z), 0, 2^b - 1)``.

Scales smaller than float32 eps are raised to eps (see :mod:`.lowering`).
"""

from __future__ import annotations

import numpy as np

from ..config import CompressWeightsMode

_EPS = np.finfo(np.float32).eps


def levels(mode: CompressWeightsMode) -> tuple[int, int]:
    """The integer range ``[low, high]`` of ``mode``'s codes."""
    b = mode.num_bits
    return (0, 2**b - 1) if mode.is_asym else (-(2 ** (b - 1)), 2 ** (b - 1) - 1)


def symmetric_scale(w: np.ndarray, axis: int, num_bits: int) -> np.ndarray:
    """``signed_absmax(w) / 2^(b-1)`` along ``axis`` (keepdims), at least eps in magnitude."""
    w_abs_min = np.abs(np.min(w, axis=axis, keepdims=True))
    w_max = np.max(w, axis=axis, keepdims=True)
    scale = np.where(w_abs_min >= w_max, w_abs_min, -w_max).astype(np.float32)
    scale /= np.float32(2 ** (num_bits - 1))
    return np.where(np.abs(scale) < _EPS, _EPS, scale).astype(np.float32)


def asymmetric_params(w: np.ndarray, axis: int, num_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of ``[min(w, 0), max(w, 0)]`` mapped onto ``[0, 2^b - 1]``."""
    high_level = 2**num_bits - 1
    lo = np.minimum(np.min(w, axis=axis, keepdims=True), np.float32(0))
    hi = np.maximum(np.max(w, axis=axis, keepdims=True), np.float32(0))
    scale = ((hi - lo) / np.float32(high_level)).astype(np.float32)
    scale = np.where(np.abs(scale) < _EPS, _EPS, scale).astype(np.float32)
    zero_point = np.clip((0 - np.round(lo / scale)).astype(np.int32), 0, high_level)
    return scale, zero_point.astype(np.uint8)


def quantization_params(w: np.ndarray, axis: int, mode: CompressWeightsMode) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale and zero point (None when symmetric) of ``w`` along ``axis`` (keepdims) for ``mode``."""
    if mode.is_asym:
        return asymmetric_params(w, axis, mode.num_bits)
    return symmetric_scale(w, axis, mode.num_bits), None


def rounded_levels(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, mode: CompressWeightsMode) -> np.ndarray:
    """``clip(round(w / scale [+ zero_point]))`` as float32 integers."""
    low, high = levels(mode)
    q = np.divide(w, scale, dtype=np.float32)
    if zero_point is not None:
        q += zero_point.astype(np.float32)
    np.rint(q, out=q)
    np.clip(q, low, high, out=q)
    return q
