"""GPTQ: quantize a layer column by column, folding each column's error into the columns not yet quantized.

For a weight ``W [out, in]`` and calibration inputs ``X [N, in]`` the objective is
the layer-output error

    E(Q) = || X (W - deq(Q))^T ||^2 = tr((W - deq(Q)) H (W - deq(Q))^T) N / 2,   H = 2 X^T X / N.

GPTQ (Frantar et al. 2022) quantizes input channel ``j`` to the nearest grid
point and compensates the remaining float channels with the optimal update

    e = (w_j - deq(q_j)) / U_jj,    W[:, j:] -= e U[j, j:],

with ``U`` the upper Cholesky factor of ``(H + lambda I)^-1``, ``lambda =
percdamp * mean(diag H)``.  Updates are applied lazily per block of
columns (a block is a multiple of the group size, so the result does not
depend on the block size).  Channels never activated (``H_jj = 0``) are dead:
their weights are set to 0 and ``H_jj`` to 1.  Group scales and zero points
are computed with our RTN formulas when quantization enters a group, from the
group's *current* weights (already updated by every earlier column); with
``group_size == -1`` they are computed once from the whole weight.  The scales
are rounded to f16 before use, as stored in the IR, so the error that is
propagated is the deployed one.

With ``scale_estimation`` each group's scale is chosen, when the group is
entered, by scale estimation on the group's block of ``H`` (the output error
of the group's current weights, as NNCF's GPTQ does with scale estimation);
at the end the codes are fixed and each row's scales
``s_r`` (one per group) are refitted jointly by least squares on ``H``:

    min_s (w - Q_r s)^T H (w - Q_r s)  =>  (Q_r^T H Q_r) s = Q_r^T H w,

where column ``g`` of ``Q_r`` holds ``q - z`` of group ``g``; a row keeps its
scales unless the (f16) refit lowers its error on ``H``, so the refit never
makes the result worse on the calibration inputs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..config import CompressWeightsMode
from .float_lowering import group_scale
from .formats import format_of
from .lowering import CompressedWeight, codes_of_levels, levels, quantization_params, round_to_levels
from .refinement import f16_rounded, refine_codes_and_scales, refit_scales

PERCDAMP = 0.01
BLOCK_SIZE = 128
SUB_BLOCK = 32  # columns whose rank-1 updates are applied one by one; the rest of a block gets them as one product


def group_params(w: np.ndarray, mode: CompressWeightsMode, codebook: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """RTN scale (rounded to f16) and zero point of each row of ``w [out, k]``: shapes [out], [out] or None."""
    if not mode.is_integer:
        fmt = format_of(mode, codebook)
        return f16_rounded(group_scale(np.asarray(w, dtype=np.float32), 1, fmt, codebook)[:, 0]), None
    scale, zp = quantization_params(np.asarray(w, dtype=np.float32), 1, mode)
    return f16_rounded(scale[:, 0]), None if zp is None else zp[:, 0].astype(np.float64)


def quantize_column(w: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, mode: CompressWeightsMode,
                    codebook: np.ndarray | None = None) -> np.ndarray:
    """``clip(round(w / s [+ z]))`` as float64 integers (float formats, codebooks: the nearest grid value)."""
    if not mode.is_integer:
        return round_to_levels(np.asarray(w, dtype=np.float32), scale, None, mode, codebook).astype(np.float64)
    low, high = levels(mode)
    q = w / scale.astype(np.float64)
    if zp is not None:
        q += zp
    return np.clip(np.rint(q), low, high)


GPTAQ_ALPHA = 0.25  # share of the asymmetric correction applied (the GPTAQ authors' implementation)


def dead_channels(hessian: np.ndarray) -> np.ndarray:
    return np.diag(hessian) == 0


def inverse_hessian_factor(hessian: np.ndarray, percdamp: float = PERCDAMP) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``(H + lambda I)^-1`` (``U^T U``), dead channels given ``H_jj = 1``.

    With ``J`` the reversal permutation and ``L L^T = J (H + lambda I) J``,
    ``U = J L^-1 J``: one Cholesky factorization and one triangular inverse.
    The damping is raised tenfold until ``H + lambda I`` is positive definite.
    """
    from scipy.linalg import lapack

    h = np.array(hessian, dtype=np.float64)
    dead = dead_channels(h)
    h[dead, dead] = 1.0
    damp = percdamp * float(np.mean(np.diag(h)))
    idx = np.arange(h.shape[0])
    for _ in range(8):
        hd = h[::-1, ::-1].copy()
        hd[idx, idx] += damp
        lower, info = lapack.dpotrf(hd, lower=1, clean=1)
        if info == 0:
            inv, info = lapack.dtrtri(lower, lower=1)
            if info == 0:
                return np.ascontiguousarray(inv[::-1, ::-1])
        damp = damp * 10 if damp > 0 else 1e-8
    raise np.linalg.LinAlgError("the layer Hessian stays singular even with strong damping")


def asymmetric_target(w: np.ndarray, cross: np.ndarray, factor: np.ndarray, alpha: float = GPTAQ_ALPHA) -> np.ndarray:
    """GPTAQ's target ``W* = W + alpha W P (H + lambda I)^-1`` for ``w [out, in]``.

    Objective: the quantized layer fed the *quantized* model's inputs ``X~``
    should reproduce the *float* layer fed the float model's inputs ``X``,
    ``min_Q ||X W^T - X~ Q^T||^2``.  With ``H = X~^T X~`` and
    ``P = (X - X~)^T X~`` (both scaled by ``2/N``), that equals GPTQ's
    ``||X~ (W* - Q)^T||^2`` (``alpha = 1``) up to a constant (Li et al.,
    GPTAQ, ICML 2025), so GPTQ run on ``W*`` with ``H`` minimises it.
    ``factor``: GPTQ's damped inverse factor (:func:`inverse_hessian_factor`,
    ``U^T U = (H + lambda I)^-1``).  ``alpha`` applies a share of the
    correction, as the authors' implementation does (0.25): the full
    correction chases drift estimated on a few thousand tokens.
    """
    return w + alpha * (((w @ np.asarray(cross, dtype=np.float64)) @ factor.T) @ factor)


def estimated_group_params(w: np.ndarray, gram: np.ndarray, mode: CompressWeightsMode,
                           codebook: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (f16) and zero point of each row of ``w [out, k]`` chosen by scale estimation on the group Gram ``gram [k, k]``.

    The scale minimising the group's output error ``d^T G d`` among the
    scale-estimation candidates (RTN included); the zero point is RTN's.
    """
    from .scale_estimation import estimate_scales

    cw = estimate_scales(np.asarray(w, dtype=np.float32), None, mode, w.shape[1], 1,
                         np.asarray(gram, dtype=np.float32)[None], codebook=codebook)
    scale = f16_rounded(cw.scale.reshape(-1))
    zp = None if cw.zero_point is None else cw.zero_point.reshape(-1).astype(np.float64)
    return scale, zp


def static_group_params(w: np.ndarray, mode: CompressWeightsMode, group_size: int, hessian: np.ndarray | None = None,
                        codebook: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Every group's scale (f16) and zero point from the weights as they are: ``[out, n_groups]`` each.

    RTN's, or with ``hessian`` scale estimation's on the group's block of ``H``.
    """
    out_ch, in_ch = w.shape
    gs = in_ch if group_size == -1 else group_size
    scales = np.empty((out_ch, in_ch // gs), dtype=np.float32)
    zps = np.empty((out_ch, in_ch // gs), dtype=np.float64) if mode.is_asym else None
    for g in range(in_ch // gs):
        cols = slice(g * gs, (g + 1) * gs)
        if hessian is None:
            scale, zp = group_params(w[:, cols], mode, codebook)
        else:
            scale, zp = estimated_group_params(w[:, cols], hessian[cols, cols], mode, codebook)
        scales[:, g] = scale
        if zps is not None:
            zps[:, g] = zp
    return scales, zps


def gptq_codes(
    w: np.ndarray, u: np.ndarray, mode: CompressWeightsMode, group_size: int, block_size: int = BLOCK_SIZE,
    hessian: np.ndarray | None = None, codebook: np.ndarray | None = None,
    static: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The GPTQ loop on ``w [out, in]`` (float64, modified in place) with factor ``u``.

    With ``hessian``, a group's parameters are chosen by scale estimation on
    the group's block of ``H`` (:func:`estimated_group_params`) instead of RTN.
    ``static = (scales, zero points, group of each column)``: the groups'
    parameters are fixed beforehand and the columns may come in any order
    (act-order: ``w`` and ``u`` permuted by the caller).
    Returns the codes [out, in] (float64 integers) and the scales / zero points
    [out, n_groups].
    """
    out_ch, in_ch = w.shape
    gs = in_ch if group_size == -1 else group_size
    ng = in_ch // gs
    codes = np.empty((out_ch, in_ch), dtype=np.float64)
    scales = np.empty((out_ch, ng), dtype=np.float32)
    zps = np.empty((out_ch, ng), dtype=np.float64) if mode.is_asym else None
    if static is not None:
        block, (scales, zps, group_of) = block_size, static
    elif group_size == -1:
        block = block_size
        scale, zp = group_params(w, mode, codebook)
        scales[:, 0] = scale
        if zps is not None:
            zps[:, 0] = zp
    else:  # blocks made of whole groups: a group's current weights are all in the block being processed
        block = gs * max(1, block_size // gs)
    sub = math.gcd(SUB_BLOCK, block)
    for i1 in range(0, in_ch, block):
        i2 = min(i1 + block, in_ch)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j1 in range(0, i2 - i1, sub):  # rank-1 updates stay inside a small sub-block (cache-sized)
            j2 = min(j1 + sub, i2 - i1)
            for i in range(j1, j2):
                col = i1 + i
                if static is not None:
                    scale, zp = scales[:, group_of[col]], None if zps is None else zps[:, group_of[col]]
                elif group_size != -1 and col % gs == 0:  # sub divides gs: the group's columns are all current
                    if hessian is None:
                        scale, zp = group_params(w1[:, i : i + gs], mode, codebook)
                    else:
                        scale, zp = estimated_group_params(w1[:, i : i + gs], hessian[col : col + gs, col : col + gs],
                                                           mode, codebook)
                    scales[:, col // gs] = scale
                    if zps is not None:
                        zps[:, col // gs] = zp
                q = quantize_column(w1[:, i], scale, zp, mode, codebook)
                codes[:, col] = q
                deq = (q - zp if zp is not None else q) * scale
                e = (w1[:, i] - deq) / u1[i, i]
                w1[:, i + 1 : j2] -= np.outer(e, u1[i, i + 1 : j2])
                err[:, i] = e
            w1[:, j2:] -= err[:, j1:j2] @ u1[j1:j2, j2:]
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return codes, scales, zps


def gptq_quantize_layers(
    weights: Sequence[np.ndarray],
    axes: Sequence[int],
    hessian: np.ndarray,
    mode: CompressWeightsMode,
    group_size: int,
    *,
    scale_estimation: bool = False,
    percdamp: float = PERCDAMP,
    block_size: int = BLOCK_SIZE,
    codebook: np.ndarray | None = None,
    act_order: bool = False,
    refine_rounds: int = 0,
    cross: np.ndarray | None = None,
) -> list[CompressedWeight]:
    """GPTQ compression of 2-D weights that read the same input (Hessian ``H [in, in]``), each reduced along its axis.

    GPTQ treats the rows of ``[out, in]`` independently, so the layers are
    stacked along their rows and quantized in one column loop with one
    inverse-Hessian factor; the result equals quantizing each alone.

    ``act_order``: the columns are quantized in decreasing order of ``H_jj``
    (the most activated input channels first, while the most columns remain
    to absorb their error; Frantar et al.'s act-order), with *static* groups:
    each group's scale and zero point are fixed from the weights before the
    loop (:func:`static_group_params`), so the groups stay the contiguous
    channels of the IR's pattern and no Gather is needed (llm-compressor's
    ``actorder: "static"``).

    ``refine_rounds`` (integer modes): after GPTQ, rounds of
    :func:`refine_codes_and_scales` on the same objective.

    ``cross`` (``P = 2/N (X - X~)^T X~``, the float model's inputs against
    these): GPTAQ, every step aims at :func:`asymmetric_target` instead of ``W``.
    """
    if refine_rounds and not mode.is_integer:
        raise ValueError(f"rounding refinement is for integer modes, not for {mode.value}")
    if mode.num_bits > 4 or not mode.allows_data_aware:
        raise ValueError(f"GPTQ is for formats of 4 bits or fewer with a sorted grid, not for {mode.value}")
    rows = []
    for weight, axis in zip(weights, axes):
        w0 = np.asarray(weight, dtype=np.float32)
        if w0.ndim != 2:
            raise ValueError(f"GPTQ needs 2-D weights, got shape {w0.shape}")
        rows.append(w0.T if axis % 2 == 0 else w0)
    in_ch = rows[0].shape[1]
    if any(r.shape[1] != in_ch for r in rows):
        raise ValueError("layers quantized together must have the same number of input channels")
    gs = in_ch if group_size == -1 else group_size
    if in_ch % gs:
        raise ValueError(f"channel size {in_ch} is not divisible by group size {gs}")
    h = np.asarray(hessian, dtype=np.float64)
    w2 = np.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
    w = np.array(w2, dtype=np.float64)
    w[:, dead_channels(h)] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else None
    hp = h[np.ix_(perm, perm)] if act_order else h
    factor = inverse_hessian_factor(hp, percdamp)  # of H in the order the columns are quantized
    if cross is not None:
        if act_order:  # (W P H^-1)[:, perm] = W[:, perm] P[perm, perm] H[perm, perm]^-1
            w[:, perm] = asymmetric_target(w[:, perm], np.asarray(cross)[np.ix_(perm, perm)], factor)
        else:
            w = asymmetric_target(w, cross, factor)
        w[:, dead_channels(h)] = 0.0
        w2 = w.copy()  # scale refits aim at the same target
    target = w.copy() if refine_rounds else None  # the GPTQ loop updates w in place
    estimate = h if scale_estimation and group_size != -1 else None
    if act_order:
        scales, zps = static_group_params(w, mode, group_size, estimate, codebook)
        codes_p, _, _ = gptq_codes(np.ascontiguousarray(w[:, perm]), factor, mode,
                                   group_size, block_size, codebook=codebook, static=(scales, zps, perm // gs))
        codes = np.empty_like(codes_p)
        codes[:, perm] = codes_p
    else:
        codes, scales, zps = gptq_codes(w, factor, mode, group_size, block_size, hessian=estimate, codebook=codebook)
    qz = codes - np.repeat(zps, gs, axis=1) if zps is not None else codes
    if scale_estimation:
        scales = refit_scales(np.asarray(w2, dtype=np.float64), qz, scales, h, group_size)
    if refine_rounds:
        codes, scales = refine_codes_and_scales(target, codes, scales, zps, h, mode, group_size, refine_rounds,
                                                perm)
        qz = codes - np.repeat(zps, gs, axis=1) if zps is not None else codes
    out, offset = [], 0
    for weight, axis, r in zip(weights, axes, rows):
        part = slice(offset, offset + r.shape[0])
        offset += r.shape[0]
        out.append(_compressed(r, codes[part], qz[part], scales[part], None if zps is None else zps[part],
                               mode, group_size, transposed=axis % 2 == 0, shape=tuple(np.shape(weight)),
                               codebook=codebook))
    return out


def _compressed(w2, codes, qz, scales, zps, mode, group_size, transposed: bool, shape, codebook=None) -> CompressedWeight:
    """A :class:`CompressedWeight` in the grouped layout of a weight of ``shape`` from ``[out, in]`` results."""
    out_ch, in_ch = w2.shape
    gs = in_ch if group_size == -1 else group_size
    ng = in_ch // gs
    deq = (np.repeat(scales.astype(np.float64), gs, axis=1) * qz).astype(np.float32)
    codes = codes_of_levels(codes, mode, codebook)
    if group_size == -1:
        codes_l, scale_l = codes, scales.reshape(out_ch, 1)
        zero_l = None if zps is None else zps.astype(np.uint8).reshape(out_ch, 1)
    else:
        codes_l, scale_l = codes.reshape(out_ch, ng, gs), scales.reshape(out_ch, ng, 1)
        zero_l = None if zps is None else zps.astype(np.uint8).reshape(out_ch, ng, 1)
    if transposed:  # back to [n_groups, gs, out] (or [in, out]) for a weight reduced along axis 0
        move = lambda a: None if a is None else np.ascontiguousarray(np.moveaxis(a, 0, -1))  # noqa: E731
        codes_l, scale_l, zero_l = move(codes_l), move(scale_l), move(zero_l)
    diff = deq - w2
    return CompressedWeight(codes_l, np.ascontiguousarray(scale_l, dtype=np.float32), zero_l, mode, group_size,
                            tuple(shape), float(np.vdot(diff, diff)), float(np.vdot(w2, w2)), codebook=codebook)


def gptq_quantize(
    weight: np.ndarray,
    hessian: np.ndarray,
    mode: CompressWeightsMode,
    group_size: int,
    axis: int,
    *,
    scale_estimation: bool = False,
    percdamp: float = PERCDAMP,
    block_size: int = BLOCK_SIZE,
    codebook: np.ndarray | None = None,
    act_order: bool = False,
    refine_rounds: int = 0,
    cross: np.ndarray | None = None,
) -> CompressedWeight:
    """GPTQ compression of one 2-D ``weight`` reduced along ``axis`` with the layer Hessian ``H [in, in]``."""
    return gptq_quantize_layers([weight], [axis], hessian, mode, group_size, scale_estimation=scale_estimation,
                                percdamp=percdamp, block_size=block_size, codebook=codebook, act_order=act_order,
                                refine_rounds=refine_rounds, cross=cross)[0]
