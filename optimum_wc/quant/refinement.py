"""GPTQ's layer objective, refined after the column loop: least-squares scales and coordinate descent on the codes.

For a weight ``W [out, in]``, its dequantized codes ``deq`` and the layer
Hessian ``H = 2 X^T X / N``, the objective is ``tr((W - deq) H (W - deq)^T)``
(the layer-output error on the calibration inputs).  GPTQ fixes each code
once, knowing only the columns quantized before it; the functions here
revisit codes and scales with the whole error in view, never raising the
objective.
"""

from __future__ import annotations

import numpy as np

from ..config import CompressWeightsMode
from .lowering import levels


def f16_rounded(v: np.ndarray) -> np.ndarray:
    """``v`` rounded to float16, as the IR stores scales, back in float32."""
    return np.asarray(v, dtype=np.float32).astype(np.float16).astype(np.float32)


def refine_rounding(w: np.ndarray, codes: np.ndarray, scales: np.ndarray, zps: np.ndarray | None,
                    hessian: np.ndarray, mode: CompressWeightsMode, group_size: int, passes: int = 1,
                    order: np.ndarray | None = None) -> np.ndarray:
    """Lower ``tr(D H D^T)``, ``D = W - deq(codes)``, by moving single codes one step: the codes, improved.

    Coordinate descent on the layer-output objective GPTQ minimises greedily:
    for column ``j`` (in ``order``) every row takes the step ``delta`` in
    ``{-s, 0, +s}`` (within the code range) that minimises
    ``-2 delta G_j + delta^2 H_jj`` with ``G = D H``; ``G`` is updated after
    each column, so the objective never rises.  Integer modes only.
    """
    out_ch, in_ch = w.shape
    gs = in_ch if group_size == -1 else group_size
    low, high = levels(mode)
    col_scale = np.repeat(scales.astype(np.float64), gs, axis=1)
    col_zp = np.repeat(zps, gs, axis=1) if zps is not None else 0.0
    codes = codes.copy()
    g = (w - (codes - col_zp) * col_scale) @ hessian
    diag = np.diag(hessian)
    for _ in range(passes):
        for j in (range(in_ch) if order is None else order):
            s, hjj = col_scale[:, j], diag[j]
            if hjj <= 0:
                continue
            best = np.zeros(out_ch)
            gain = np.zeros(out_ch)
            for step in (-1.0, 1.0):
                delta = step * s
                change = -2.0 * delta * g[:, j] + delta * delta * hjj  # objective change of deq_j += delta
                ok = (codes[:, j] + step >= low) & (codes[:, j] + step <= high) & (change < gain)
                best = np.where(ok, step, best)
                gain = np.where(ok, change, gain)
            moved = np.flatnonzero(best)
            if moved.size:  # few rows move: update only theirs
                codes[moved, j] += best[moved]
                g[moved] -= np.outer(best[moved] * s[moved], hessian[j])
    return codes


def refine_codes_and_scales(w: np.ndarray, codes: np.ndarray, scales: np.ndarray, zps: np.ndarray | None,
                            hessian: np.ndarray, mode: CompressWeightsMode, group_size: int, rounds: int,
                            order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Block coordinate descent on GPTQ's objective ``tr((W - deq) H (W - deq)^T)``: ``rounds`` times, the codes
    (:func:`refine_rounding`, one pass, scales fixed) then the scales (:func:`refit_scales`, codes fixed).

    Neither half can raise the objective, so the result is never worse on
    the calibration inputs than GPTQ's own; each improves what the other
    left (GPTQ fixes a code once, knowing only the columns before it).
    """
    gs = w.shape[1] if group_size == -1 else group_size
    for _ in range(rounds):
        codes = refine_rounding(w, codes, scales, zps, hessian, mode, group_size, 1, order)
        qz = codes - np.repeat(zps, gs, axis=1) if zps is not None else codes
        scales = refit_scales(w, qz, scales, hessian, group_size)
    return codes, scales


def row_errors(w: np.ndarray, deq: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``(w_r - deq_r)^T H (w_r - deq_r)`` for each row."""
    d = w - deq
    return np.einsum("oi,oi->o", d @ hessian, d)


def refit_scales(w: np.ndarray, qz: np.ndarray, scales: np.ndarray, hessian: np.ndarray, group_size: int) -> np.ndarray:
    """Per row, the least-squares scales for fixed ``qz = q - z`` on ``H``; a row keeps ``scales`` unless better."""
    out_ch, in_ch = w.shape
    gs = in_ch if group_size == -1 else group_size
    ng = in_ch // gs
    qg = qz.reshape(out_ch, ng, gs)
    rhs = np.einsum("ogk,ogk->og", (w @ hessian).reshape(out_ch, ng, gs), qg)
    gram = np.empty((out_ch, ng, ng), dtype=np.float64)
    for g in range(ng):  # gram[r, :, g] = Q_r^T H[:, group g] qz_r[group g]
        hq = qz[:, g * gs : (g + 1) * gs] @ hessian[g * gs : (g + 1) * gs, :]
        gram[:, :, g] = np.einsum("ogk,ogk->og", hq.reshape(out_ch, ng, gs), qg)
    ridge = 1e-9 * np.maximum(np.trace(gram, axis1=1, axis2=2) / ng, 1e-30)
    gram[:, np.arange(ng), np.arange(ng)] += ridge[:, None]
    fit = f16_rounded(np.linalg.solve(gram, rhs[..., None])[..., 0])
    expand = lambda s: np.repeat(s.astype(np.float64), gs, axis=1) * qz  # noqa: E731
    old_err = row_errors(w, expand(scales), hessian)
    new_err = row_errors(w, expand(fit), hessian)
    ok = np.all(np.isfinite(fit), axis=1) & np.all(np.sign(fit) == np.sign(scales), axis=1) & (new_err < old_err)
    return np.where(ok[:, None], fit, scales).astype(np.float32)
