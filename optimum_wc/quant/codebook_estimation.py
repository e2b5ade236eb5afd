"""Adaptive codebook: a 16-entry look-up table fitted to one weight (pure NumPy).

Objective.  With each group normalised by its largest-magnitude weight
``e`` (sign kept, the quantizer's signed scale), ``u = w / e`` in [-1, 1]
with 1 always reached, find the table ``C`` (sorted, with ``C_{K-1} = 1``
and one entry exactly 0, so that every group's extreme and zeros are
represented; the lowest entry is free) minimising

    L(C) = sum_i a_i e_i^2 (u_i - C[nearest(u_i)])^2,

with ``a_i`` the importance of weight ``i``'s input channel (its mean
squared activation when calibration statistics are at hand, else 1) and
``e_i`` its group's scale: the weighted weight error (with activations, the
diagonal of the layer-output error).  It is one-dimensional
weighted k-means (Lloyd-Max), solved on a fine histogram of ``u`` from
CB4's table rescaled (a start from the distribution's quantiles reached a
lower ``L`` but a worse perplexity on SmolLM2); Lloyd's steps never
increase ``L``.  The entries are then rounded to E4M3 (the table's element
type in the IR) and kept distinct; the starting table is kept when it
scores better after rounding.
With calibration rows at hand, :func:`choose_codebook` then keeps the
table with the smallest layer-output error among a few fits.
Deterministic: no random start, fixed bins and iterations.
"""

from __future__ import annotations

import numpy as np

from . import minifloat

BINS = 4096
ITERATIONS = 60


def normalized_groups(weight: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``u = w / e`` per group of a 2-D ``[out, in]`` weight (per row with ``group_size == -1``), float32,
    and ``e^2`` per element: an error of ``d`` in ``u`` is an error of ``e d`` in the weight."""
    w = np.asarray(weight, dtype=np.float32)
    out_ch, in_ch = w.shape
    gs = in_ch if group_size == -1 else group_size
    g = w.reshape(out_ch, in_ch // gs, gs)
    lo, hi = g.min(axis=2, keepdims=True), g.max(axis=2, keepdims=True)
    extreme = np.where(np.abs(lo) > hi, lo, hi)
    u = np.clip(g / np.where(extreme != 0, extreme, 1), -1.0, 1.0).reshape(out_ch, in_ch)
    return u, np.broadcast_to(np.square(extreme.astype(np.float64)), g.shape).reshape(out_ch, in_ch)


def histogram(u: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres over [-1, 1] and each bin's total weight (``weights``: one per element of ``u``)."""
    edges = np.linspace(-1.0, 1.0, BINS + 1)
    mass, _ = np.histogram(u, bins=edges, weights=weights)
    return 0.5 * (edges[1:] + edges[:-1]), mass


def loss(table: np.ndarray, centres: np.ndarray, mass: np.ndarray) -> float:
    """``L(C)`` on the histogram, with the table scaled so that its largest entry is 1."""
    c = np.asarray(table, np.float64) / np.max(table)
    boundaries = 0.5 * (c[1:] + c[:-1])
    nearest = c[np.searchsorted(boundaries, centres)]
    return float(np.sum(mass * (centres - nearest) ** 2))


def lloyd(start: np.ndarray, centres: np.ndarray, mass: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Weighted 1-D k-means from ``start`` (sorted); entries flagged ``fixed`` do not move."""
    c = np.array(start, dtype=np.float64)
    for _ in range(ITERATIONS):
        cluster = np.searchsorted(0.5 * (c[1:] + c[:-1]), centres)
        total = np.bincount(cluster, weights=mass, minlength=c.size)
        moment = np.bincount(cluster, weights=mass * centres, minlength=c.size)
        new = np.where((total > 0) & ~fixed, moment / np.where(total > 0, total, 1), c)
        if np.max(np.abs(new - c)) < 1e-7:
            return new
        c = new
    return c


def to_e4m3_table(c: np.ndarray) -> np.ndarray:
    """``c`` (sorted, in [-1, 1]) rounded to E4M3 values, made strictly increasing by stepping up where two meet."""
    codes = minifloat.e4m3_codes(np.asarray(c, np.float32)).astype(np.int64)
    values = minifloat.E4M3_VALUES[codes].astype(np.float64)
    grid = np.unique(minifloat.E4M3_VALUES[np.isfinite(minifloat.E4M3_VALUES)].astype(np.float64))
    for i in range(1, values.size):
        if values[i] <= values[i - 1]:
            values[i] = grid[np.searchsorted(grid, values[i - 1], side="right")]
    return values.astype(np.float32)


def fit_codebook(weight: np.ndarray, group_size: int, importance: np.ndarray | None = None,
                 start: np.ndarray | None = None) -> np.ndarray:
    """The adaptive table (float32, E4M3 values, as many entries as ``start``) of a 2-D ``[out, in]`` weight."""
    start = minifloat.E4M3_VALUES[minifloat.e4m3_codes(np.asarray(start, np.float32))] if start is not None else None
    if start is None:
        from .formats import CB4_CODEBOOK

        start = CB4_CODEBOOK
    u, scale_sq = normalized_groups(weight, group_size)
    weights = scale_sq if importance is None else scale_sq * np.asarray(importance, np.float64)[None, :]
    centres, mass = histogram(u, weights)
    init = np.asarray(start, np.float64) / np.max(start)
    init[-1] = 1.0
    zero = int(np.argmin(np.abs(init)))
    init[zero] = 0.0
    fixed = np.zeros(init.size, dtype=bool)
    fixed[[zero, init.size - 1]] = True
    table = to_e4m3_table(lloyd(init, centres, mass, fixed))
    return table if loss(table, centres, mass) <= loss(start, centres, mass) else np.asarray(start, np.float32)


def output_error(weight: np.ndarray, group_size: int, table: np.ndarray, rows: np.ndarray) -> float:
    """``||(W - deq(Q_C(W))) X^T||^2``: the layer-output error of quantizing ``W [out, in]`` with ``table`` on ``X``."""
    from ..config import CompressWeightsMode
    from .lowering import dequantize, quantize

    d = dequantize(quantize(weight, CompressWeightsMode.ADAPTIVE_CODEBOOK, group_size, 1, codebook=table)) - weight
    e = rows @ d.T
    return float(np.vdot(e, e))


def choose_codebook(weight: np.ndarray, group_size: int, importance: np.ndarray | None = None,
                    start: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """:func:`fit_codebook`; with calibration ``rows`` (``X [N, in]``), the best on the layer-output error of the
    tables fitted with and without ``importance`` and the starting table.

    The fit minimises the diagonal of that error; on SmolLM2 picking among
    these candidates by the full error lowers the perplexity (33.19 -> 32.74).
    """
    w = np.asarray(weight, dtype=np.float32)
    fitted = fit_codebook(w, group_size, importance, start)
    if rows is None or not len(rows):
        return fitted
    candidates = [fitted, fit_codebook(w, group_size, None, start)]
    if start is not None:
        candidates.append(minifloat.E4M3_VALUES[minifloat.e4m3_codes(np.asarray(start, np.float32))])
    x = np.asarray(rows, dtype=np.float32)
    errors = [output_error(w, group_size, table, x) for table in candidates]
    return candidates[int(np.argmin(errors))]
