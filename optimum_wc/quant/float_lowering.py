"""Float and codebook weight quantization: NF4, FP4, FP8, MXFP4, MXFP8, NVFP4, CB4 and codebooks (pure NumPy).

For a weight ``W`` reduced per group of ``g`` input channels (per output
channel with ``g = -1``), in float32, with ``a = max |W|`` over the group:

* NF4 and FP/MX formats: ``s = max(a, eps) / M`` with ``M`` the format's
  largest value (1 for NF4, 6 for E2M1, 448 for E4M3); MX formats round
  ``s`` up to a power of two, ``2^ceil(log2 s)`` clipped to ``2^+-127``
  (their E8M0 scale); the codes are ``encode(W / s)``.
* NVFP4: E2M1 codes with ``s`` as for FP4 (group of 16); then the scales
  ``s`` are themselves stored in E4M3 with one float32 scale for the whole
  weight, ``t = max(max s, eps) / 448``: the group scale becomes
  ``e4m3(s / t) * t``.  The codes use the unrounded ``s`` (as NNCF does).
* codebooks (CB4, a given table ``C``): ``s = a / max |C|`` (eps if smaller),
  the code is the index of the entry of ``C`` nearest to ``W / s``; an
  adaptive table is fitted with signed scales, ``s = e / max C`` with ``e``
  the group's largest-magnitude weight (its sign kept; eps if smaller), so
  that ``e`` always lands on the table's top entry.

``W ~ values[code] * s`` in every case.  These are NNCF's formulas in the
order its OpenVINO-compiled path computes them (the eps floor before the
division by ``M``), except the E8M0 exponent: NNCF's compiled path takes
``ceil(log(s) / log(2))`` with the CPU plugin's approximate ``log``, which
rounds some exact powers of two up; here it is the exact ``ceil(log2(s))``,
the smallest power of two at least ``s``, as NNCF's own docstring and the
MX specification define it.
"""

from __future__ import annotations

import numpy as np

from . import minifloat
from .formats import WeightFormat

_EPS = np.finfo(np.float32).eps


def group_scale(w: np.ndarray, axis: int, fmt: WeightFormat, codebook: np.ndarray | None = None) -> np.ndarray:
    """The float32 scale of each group of ``w`` (reduced over ``axis``, keepdims), before NVFP4's second level."""
    if fmt.signed_scale:
        return signed_codebook_scale(w, axis, codebook)
    absmax = np.max(np.abs(w), axis=axis, keepdims=True)
    if fmt.codebook:  # (NNCF's reference order: divide, then the eps floor)
        scale = (absmax / np.max(np.abs(codebook))).astype(np.float32)
        return np.where(np.abs(scale) < _EPS, _EPS, scale).astype(np.float32)
    scale = np.where(absmax < _EPS, _EPS, absmax).astype(np.float32)
    if fmt.max_value != 1.0:
        scale = (scale / np.float32(fmt.max_value)).astype(np.float32)
    if fmt.scale_type == "f8e8m0":
        scale = np.ldexp(np.float32(1.0), minifloat.e8m0_exponent(scale)).astype(np.float32)
    return scale


def signed_codebook_scale(w: np.ndarray, axis: int, codebook: np.ndarray) -> np.ndarray:
    """``e / max C`` per group, ``e`` the largest-magnitude weight with its sign (the larger one if ``|min| == max``)."""
    lo, hi = np.min(w, axis=axis, keepdims=True), np.max(w, axis=axis, keepdims=True)
    extreme = np.where(np.abs(lo) > hi, lo, hi)
    scale = (extreme / np.max(codebook)).astype(np.float32)
    return np.where(np.abs(scale) < _EPS, _EPS, scale).astype(np.float32)


def encode_block(w: np.ndarray, axis: int, fmt: WeightFormat, codebook: np.ndarray | None = None,
                 scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Codes (uint8) and float32 group scales of a float32 block ``w``; ``scale`` given: use it as it is."""
    if scale is None:
        scale = group_scale(w, axis, fmt, codebook)
    normalized = np.divide(w, scale, dtype=np.float32)
    return fmt.encode(normalized, codebook), scale


def second_level(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NVFP4's scale of the scales: E4M3 codes of ``scale / t``, their values, and ``t`` (keepdims)."""
    top = np.max(np.abs(scale), keepdims=True)
    t = (np.where(top < _EPS, _EPS, top) / np.float32(minifloat.E4M3_MAX)).astype(np.float32)
    codes = minifloat.e4m3_codes(np.divide(scale, t, dtype=np.float32))
    return codes, minifloat.E4M3_VALUES[codes], t


def decode(codes: np.ndarray, scale: np.ndarray, fmt: WeightFormat, codebook: np.ndarray | None = None,
           global_scale: np.ndarray | None = None) -> np.ndarray:
    """``values[codes] * scale [* global scale]`` in float32 (grouped layout, as the codes)."""
    out = fmt.values(codebook)[codes] * scale
    if global_scale is not None:
        out *= global_scale
    return out.astype(np.float32, copy=False)
