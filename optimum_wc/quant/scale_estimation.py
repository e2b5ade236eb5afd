"""Scale estimation: refit group scales to the layer's output error on calibration inputs.

For each output row ``o`` and input group ``g`` with weights ``w`` (a vector
of ``group_size``), codes ``q`` and zero point ``z``, the output error of the
group over calibration inputs ``X_g`` is

    E(s, q) = || X_g (w - s (q - z)) ||^2 / N = d^T G_g d,   d = w - s (q - z),
    G_g = X_g^T X_g / N

so channels carrying large activations weigh more (the channel importance).
Starting from round-to-nearest, candidates ``s = a * s_rtn`` (a on a small
grid) are rounded to codes, each refitted by least squares for fixed codes,

    s* = (w^T G_g (q - z)) / ((q - z)^T G_g (q - z)),

and the (codes, f16 scale) pair with the smallest E is kept, group by group.
RTN is among the candidates, so the result is never worse than RTN on the
calibration inputs.
"""

from __future__ import annotations

import numpy as np

from ..config import CompressWeightsMode
from .lowering import CompressedWeight, codes_of_levels, level_values, quantize, round_to_levels

GRID = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1)
_TINY = 1e-12


def group_grams(x: np.ndarray, group_size: int) -> np.ndarray:
    """``G_g = X_g^T X_g / N`` for each input group: [n_groups, gs, gs] from ``X [N, C]``."""
    n, c = x.shape
    xg = x.reshape(n, c // group_size, group_size).transpose(1, 0, 2).astype(np.float32)
    return np.matmul(xg.transpose(0, 2, 1), xg) / np.float32(max(n, 1))


def _gram_products(a: np.ndarray, b: np.ndarray, grams: np.ndarray) -> np.ndarray:
    """``a_g^T G_g b_g`` for each (group, row): a, b [ng, out, gs] -> [ng, out] (float64 sums)."""
    return np.einsum("gok,gok->go", a, np.matmul(b, grams)).astype(np.float64)


def estimate_scales(
    weight: np.ndarray, x: np.ndarray | None, mode: CompressWeightsMode, group_size: int, axis: int,
    grams: np.ndarray | None = None, codebook: np.ndarray | None = None,
) -> CompressedWeight:
    """Scale-estimated compression of a 2-D ``weight`` reduced along ``axis``.

    The group Grams come from ``grams`` ([n_groups, gs, gs], e.g. from all
    calibration tokens) or else from the input rows ``x [N, C_in]``.  Float
    formats (NF4) and codebooks take ``q`` as the grid values themselves.
    """
    w = np.asarray(weight, dtype=np.float32)
    transposed = (axis % 2) == 0
    w2 = np.ascontiguousarray(w.T) if transposed else w
    out_ch, in_ch = w2.shape
    gs = in_ch if group_size == -1 else group_size
    rtn = quantize(w2, mode, group_size, axis=1, codebook=codebook)  # per channel: the same maths with one group
    ng = in_ch // gs
    # work in [groups, rows, group size] so each group's product with G_g is one contiguous matmul
    wt = np.ascontiguousarray(w2.reshape(out_ch, ng, gs).transpose(1, 0, 2))
    grams = group_grams(x, gs) if grams is None else grams.astype(np.float32)
    zp = None if rtn.zero_point is None else rtn.zero_point.reshape(out_ch, ng, 1).transpose(1, 0, 2).astype(np.float32)
    s_rtn = rtn.scale.reshape(out_ch, ng, 1).transpose(1, 0, 2)
    w_g_w = _gram_products(wt, wt, grams)

    def products(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``w^T G (q - z)`` and ``(q - z)^T G (q - z)`` per (group, row)."""
        qz = q - zp if zp is not None else q
        g_qz = np.matmul(qz, grams)
        # float32 dot products of group-size length (5x faster than float64 einsum), combined in float64
        return (np.einsum("gok,gok->go", wt, g_qz).astype(np.float64),
                np.einsum("gok,gok->go", qz, g_qz).astype(np.float64))

    def error(scale: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """``E = w^T G w - 2 s w^T G (q - z) + s^2 (q - z)^T G (q - z)``."""
        return w_g_w - 2 * scale * num + scale * scale * den

    f16 = lambda v: v.astype(np.float16).astype(np.float64)  # noqa: E731 - scales are stored in f16
    best_q = np.ascontiguousarray(level_values(rtn).reshape(out_ch, ng, gs).transpose(1, 0, 2))
    best_s = f16(s_rtn[..., 0])
    best_err = error(best_s, *products(best_q))
    for a in GRID:
        start = s_rtn[..., 0].astype(np.float64) * a
        q = round_to_levels(wt, s_rtn * np.float32(a), zp, mode, codebook)
        num, den = products(q)
        ok = den > _TINY
        fit = np.where(ok, num / np.where(ok, den, 1.0), start)
        fit = f16(np.where(np.sign(fit) == np.sign(start), fit, start))
        err = error(fit, num, den)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, fit, best_s)
        best_q = np.where(better[..., None], q, best_q)

    # back to [rows, groups, group size]
    best_q = np.ascontiguousarray(best_q.transpose(1, 0, 2))
    best_s = np.ascontiguousarray(best_s.T[..., None], dtype=np.float32)
    diff = ((best_q - (0 if zp is None else zp.transpose(1, 0, 2))) * best_s).reshape(out_ch, in_ch) - w2
    zero = None if rtn.zero_point is None else rtn.zero_point.reshape(out_ch, ng, 1)
    codes, scale, zero = _weight_layout(codes_of_levels(best_q, mode, codebook), best_s, zero, group_size, transposed)
    return CompressedWeight(codes, scale, zero, mode, group_size, tuple(w.shape),
                            float(np.vdot(diff, diff)), float(np.vdot(w2, w2)), codebook=rtn.codebook)


def _weight_layout(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, group_size: int, transposed: bool):
    """``[out, groups, gs]`` results in the grouped layout of the weight (see ``CompressedWeight``)."""
    out_ch = codes.shape[0]
    if group_size == -1:  # the per-channel layout [out, in] / [out, 1]
        codes, scale = codes.reshape(out_ch, -1), scale.reshape(out_ch, 1)
        zero = None if zero is None else zero.reshape(out_ch, 1)
    if transposed:  # [n_groups, gs, out] (or [in, out]) for a weight reduced along axis 0
        move = lambda a: None if a is None else np.ascontiguousarray(np.moveaxis(a, 0, -1))  # noqa: E731
        codes, scale, zero = move(codes), move(scale), move(zero)
    return codes, scale, zero
