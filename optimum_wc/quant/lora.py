"""LoRA correction: a low-rank adapter that absorbs the output error of a 4-bit layer.

With ``W [out, in]`` the float weight, ``E = W - deq(Q(W))`` its quantization
error and ``X [N, in]`` the calibration inputs, find ``A [r, in]``,
``B [out, r]`` minimising

    L(A, B) = || X E^T - X (B A)^T ||^2 = tr((E - BA) H (E - BA)^T),   H = X^T X.

With ``H + lambda I = L L^T`` (``lambda = 0.01 mean(diag H)``, which also keeps
the fit away from directions the data never saw), ``L(A, B) = ||(E - BA) L||^2``
up to the damping term, so the best rank-``r`` product is the truncated SVD of
the whitened error ``E L = U S V^T``:  ``A = S_r^1/2 V_r^T L^-1``,
``B = U_r S_r^1/2`` (leading triplets by a seeded randomized SVD).  ``A`` is then quantized (INT8_ASYM per channel), ``B``
refitted for the quantized ``A`` by least squares,

    B = E H A^T (A H A^T)^-1,

and quantized in turn.  The adapter is kept only if it lowers ``L`` on the
calibration inputs, so a layer with an adapter is never worse than without.

Statistics: ``H`` is the full ``X^T X`` over every calibration token, from
the same per-layer passes as GPTQ (:class:`optimum_wc.calibration.hessians.LayerwiseHessians`)
on the partially compressed model, not the bounded row subsample
(``ActivationStats.rows``), whose ``in x in`` covariance would have rank at
most the number of kept rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CompressWeightsMode
from .lowering import CompressedWeight, dequantize, quantize

DEFAULT_RANK = 8
DAMPING = 0.01
OVERSAMPLE = 8  # extra random probes of the randomized SVD
POWER_ITERATIONS = 4
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


def low_rank_factors(e: np.ndarray, chol: np.ndarray, rank: int, power_iterations: int = POWER_ITERATIONS,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``A [r, in]``, ``B [out, r]`` from the rank-``r`` truncated SVD of the whitened error ``M = E L``.

    The leading singular triplets come from a randomized range finder
    (Halko et al. 2011: ``r + OVERSAMPLE`` seeded Gaussian probes, power
    iterations with re-orthonormalisation) using only products with ``E``
    and ``L``, never forming ``M`` or its full SVD; exact for the leading
    ``r`` directions up to the power iterations' convergence.
    """
    from scipy.linalg import solve_triangular

    out_ch, in_ch = e.shape
    k = min(rank + OVERSAMPLE, out_ch, in_ch)
    m = lambda v: e @ (chol @ v)  # noqa: E731 - M v
    mt = lambda v: chol.T @ (e.T @ v)  # noqa: E731 - M^T v
    y = m(np.random.default_rng(seed).standard_normal((in_ch, k)))
    q, _ = np.linalg.qr(y)
    for _ in range(power_iterations):
        z, _ = np.linalg.qr(mt(q))
        q, _ = np.linalg.qr(m(z))
    ub, s, vt = np.linalg.svd(mt(q).T, full_matrices=False)  # Q^T M = Ub S V^T
    r = min(rank, s.size)
    root = np.sqrt(s[:r])
    a = solve_triangular(chol, vt[:r].T * root, lower=True, trans="T").T  # A L = S^1/2 V^T
    return a, (q @ ub[:, :r]) * root


def refit_b(e_h: np.ndarray, a: np.ndarray, hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``B = E H A^T (A H A^T)^-1``, the best ``B`` for a fixed ``A`` (``e_h = E H``), and ``A H A^T``."""
    gram = a @ (hessian @ a.T)
    ridged = gram.copy()
    ridged[np.diag_indices_from(ridged)] += 1e-9 * max(float(np.trace(gram)) / gram.shape[0], 1e-30)
    return np.linalg.solve(ridged, (e_h @ a.T).T).T, gram


def fit_lora(
    weight: np.ndarray, dequantized: np.ndarray, hessian: np.ndarray, rank: int = DEFAULT_RANK, damping: float = DAMPING,
    chol: np.ndarray | None = None,
) -> LoraAdapter | None:
    """The adapter for ``weight [out, in]`` and its 4-bit approximation, or None if it does not help.

    ``chol``: :func:`whitened_factor` of ``hessian`` when already computed
    (layers reading one input share it).
    """
    w = np.asarray(weight, dtype=np.float64)
    e = w - np.asarray(dequantized, dtype=np.float64)
    h = np.asarray(hessian, dtype=np.float64)
    e_h = e @ h
    before = float(np.vdot(e_h, e))  # tr(E H E^T)
    if before <= 0 or not np.isfinite(before):
        return None
    a, _ = low_rank_factors(e, whitened_factor(h, damping) if chol is None else chol, rank)
    qa = quantize(a.astype(np.float32), ADAPTER_MODE, -1, axis=1)
    deq_a = dequantize(qa).astype(np.float64)
    b, gram = refit_b(e_h, deq_a, h)
    qb = quantize(b.astype(np.float32), ADAPTER_MODE, -1, axis=1)
    deq_b = dequantize(qb).astype(np.float64)
    # tr((E - BA) H (E - BA)^T) = tr(E H E^T) - 2 tr(B (A H E^T)) + tr(B (A H A^T) B^T), all from small products
    after = before - 2.0 * float(np.vdot(deq_b, e_h @ deq_a.T)) + float(np.vdot(deq_b @ gram, deq_b))
    if not after < before:
        return None
    return LoraAdapter(qa, qb, before, after)
