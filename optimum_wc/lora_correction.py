"""LoRA correction: a low-rank adapter that absorbs the output error of a 4-bit layer.

With ``W [out, in]`` the float weight, ``E = W - deq(Q(W))`` its quantization
error and ``X [N, in]`` the calibration inputs, find ``A [r, in]``,
``B [out, r]`` minimising

    L(A, B) = || X E^T - X (B A)^T ||^2 = tr((E - BA) H (E - BA)^T),   H = X^T X.

With ``H + lambda I = L L^T`` (``lambda = 0.01 mean(diag H)``, which also keeps
the fit away from directions the data never saw), ``L(A, B) = ||(E - BA) L||^2``
up to the damping term, so the best rank-``r`` product is the truncated SVD of
the whitened error ``E L = U S V^T``:  ``A = S_r^1/2 V_r^T L^-1``,
``B = U_r S_r^1/2``.  ``A`` is then quantized (INT8_ASYM per channel), ``B``
refitted for the quantized ``A`` by least squares,

    B = E H A^T (A H A^T)^-1,

and quantized in turn.  The adapter is kept only if it lowers ``L`` on the
calibration inputs, so a layer with an adapter is never worse than without.

Statistics: ``H`` is the full ``X^T X`` over every calibration token, from
the same per-layer passes as GPTQ (:class:`optimum_wc.statistics.LayerwiseHessians`)
on the partially compressed model, not the bounded row subsample
(``ActivationStats.rows``), whose ``in x in`` covariance would have rank at
most the number of kept rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import CompressWeightsMode
from .lowering import CompressedWeight, dequantize, quantize

DEFAULT_RANK = 8
DAMPING = 0.01
ADAPTER_MODE = CompressWeightsMode.INT8_ASYM


@dataclass
class LoraAdapter:
    """``y += (x A^T) B^T``: ``a`` is [rank, in] and ``b`` [out, rank], both INT8_ASYM per channel."""

    a: CompressedWeight
    b: CompressedWeight
    error_before: float  # L without the adapter
    error_after: float  # L with the quantized adapter

    @property
    def rank(self) -> int:
        return self.a.original_shape[0]


def output_error(e: np.ndarray, hessian: np.ndarray) -> float:
    """``tr(E H E^T)``."""
    return float(np.einsum("oi,oi->", e @ hessian, e))


def whitened_factor(hessian: np.ndarray, damping: float = DAMPING) -> np.ndarray:
    """Lower Cholesky factor ``L`` of ``H + lambda I`` (damping raised until it is positive definite)."""
    h = np.asarray(hessian, dtype=np.float64)
    idx = np.arange(h.shape[0])
    damp = damping * max(float(np.mean(np.diag(h))), 1e-12)
    for _ in range(8):
        hd = h.copy()
        hd[idx, idx] += damp
        try:
            return np.linalg.cholesky(hd)
        except np.linalg.LinAlgError:
            damp *= 10
    raise np.linalg.LinAlgError("the layer input covariance stays singular even with strong damping")


def low_rank_factors(e: np.ndarray, chol: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``A [r, in]``, ``B [out, r]`` from the truncated SVD of the whitened error ``E L``."""
    u, s, vt = np.linalg.svd(e @ chol, full_matrices=False)
    r = min(rank, s.size)
    root = np.sqrt(s[:r])
    a = np.linalg.solve(chol.T, vt[:r].T * root).T  # A L = S^1/2 V^T
    return a, u[:, :r] * root


def refit_b(e: np.ndarray, a: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``B = E H A^T (A H A^T)^-1``: the best ``B`` for a fixed ``A``."""
    ha = hessian @ a.T
    gram = a @ ha
    gram[np.diag_indices_from(gram)] += 1e-9 * max(float(np.trace(gram)) / gram.shape[0], 1e-30)
    return np.linalg.solve(gram, (e @ ha).T).T


def fit_lora(
    weight: np.ndarray, dequantized: np.ndarray, hessian: np.ndarray, rank: int = DEFAULT_RANK, damping: float = DAMPING
) -> LoraAdapter | None:
    """The adapter for ``weight [out, in]`` and its 4-bit approximation, or None if it does not help."""
    w = np.asarray(weight, dtype=np.float64)
    e = w - np.asarray(dequantized, dtype=np.float64)
    h = np.asarray(hessian, dtype=np.float64)
    before = output_error(e, h)
    if before <= 0 or not np.isfinite(before):
        return None
    a, _ = low_rank_factors(e, whitened_factor(h, damping), rank)
    qa = quantize(a.astype(np.float32), ADAPTER_MODE, -1, axis=1)
    b = refit_b(e, dequantize(qa).astype(np.float64), h)
    qb = quantize(b.astype(np.float32), ADAPTER_MODE, -1, axis=1)
    correction = dequantize(qb).astype(np.float64) @ dequantize(qa).astype(np.float64)
    after = output_error(e - correction, h)
    if not after < before:
        return None
    return LoraAdapter(qa, qb, before, after)
