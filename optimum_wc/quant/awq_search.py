"""AWQ's search: per-input-channel smoothing scales for the 4-bit layers that share one input.

For the MatMuls ``W_l`` that share one input ``X`` (e.g. q/k/v after a norm),
find per-channel scales ``s = m^alpha / sqrt(max(m^alpha) min(m^alpha))``,
``m_c = E|x_c|``, with ``alpha`` on a grid in [0, 1], minimising

    L(s) = sum_l || Q(W_l diag(s)) diag(s)^-1 X^T - W_l X^T ||^2

on the calibration rows; ``alpha = 0`` (s = 1) is plain round-to-nearest, so
the chosen scales never do worse than RTN on those rows.  Applying them
(``W_l <- W_l diag(s)``, ``diag(s)^-1`` absorbed upstream) is the engine's
job (:mod:`optimum_wc.engine.awq`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import CompressWeightsMode
from .lowering import quantize_dequantize

ALPHAS = tuple(round(0.1 * i, 2) for i in range(11))
SEARCH_ROWS = 256  # calibration rows (tokens) of the search
SEARCH_OUT_ROWS = 256  # weight rows of the search, spread over the group's layers: the loss is a sum over rows


def smoothing_scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """``s = m^alpha`` normalised so that ``max(s) * min(s) = 1`` (keeps weights and activations balanced)."""
    m = np.maximum(mean_abs.astype(np.float64), 1e-8) ** alpha
    s = m / np.sqrt(m.max() * m.min())
    return s.astype(np.float32)


def tied_means(mean_abs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``mean_abs`` averaged within each class of channels (``classes[c]`` = class of channel ``c``).

    Channels that must share one smoothing scale (e.g. the heads that read
    one value channel in grouped-query attention) get their class's mean
    magnitude, so that ``s = m^alpha`` is equal across each class.
    """
    classes = np.asarray(classes).reshape(-1)
    sums = np.bincount(classes, weights=mean_abs.astype(np.float64))
    counts = np.bincount(classes)
    return (sums / np.maximum(counts, 1))[classes].astype(mean_abs.dtype)


def awq_loss(weights: Sequence[np.ndarray], group_sizes: Sequence[int], x: np.ndarray, s: np.ndarray,
             mode: CompressWeightsMode, codebook: np.ndarray | None = None) -> float:
    """``sum_l || (Q(W_l s) / s - W_l) X^T ||^2 / N`` for [out, C] weights and ``x [N, C]``."""
    total = 0.0
    for w, group_size in zip(weights, group_sizes):
        deq = quantize_dequantize(w * s, mode, group_size, axis=1, codebook=codebook) / s
        diff = x @ (deq - w).T
        total += float(np.vdot(diff, diff))
    return total / max(x.shape[0], 1)


def search_scales(weights: Sequence[np.ndarray], group_sizes: Sequence[int], x: np.ndarray, mean_abs: np.ndarray,
                  mode: CompressWeightsMode, codebook: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """Best scales over :data:`ALPHAS`; returns (s, alpha, relative loss vs RTN)."""
    rows = x if x.shape[0] <= SEARCH_ROWS else x[np.linspace(0, x.shape[0] - 1, SEARCH_ROWS).astype(np.int64)]
    weights = search_rows(weights)
    best = (np.ones_like(mean_abs, dtype=np.float32), 0.0, None)
    base = None
    for alpha in ALPHAS:
        s = smoothing_scales(mean_abs, alpha) if alpha else np.ones(mean_abs.shape, np.float32)
        loss = awq_loss(weights, group_sizes, rows, s, mode, codebook)
        if base is None:
            base = loss
        if best[2] is None or loss < best[2]:
            best = (s, alpha, loss)
    return best[0], best[1], (best[2] / base if base else 1.0)


def search_rows(weights: Sequence[np.ndarray], budget: int = SEARCH_OUT_ROWS) -> list[np.ndarray]:
    """Evenly spaced rows of each ``[out, C]`` weight, about ``budget`` in all (each layer in proportion to its rows).

    Rows are quantized independently, so the loss on these rows is an
    unbiased estimate (up to a constant factor) of the loss on all of them;
    the search only compares losses between alphas.
    """
    total = sum(w.shape[0] for w in weights)
    if total <= budget:
        return list(weights)
    out = []
    for w in weights:
        k = max(1, round(budget * w.shape[0] / total))
        out.append(w[np.linspace(0, w.shape[0] - 1, k).astype(np.int64)])
    return out
