"""AWQ: activation-aware per-input-channel smoothing before 4-bit quantization.

For the MatMuls ``W_l`` that share one input ``X`` (e.g. q/k/v after a norm),
find per-channel scales ``s = m^alpha / sqrt(max(m^alpha) min(m^alpha))``,
``m_c = E|x_c|``, with ``alpha`` on a grid in [0, 1], minimising

    L(s) = sum_l || Q(W_l diag(s)) diag(s)^-1 X^T - W_l X^T ||^2

on the calibration rows; ``alpha = 0`` (s = 1) is plain round-to-nearest, so
the chosen scales never do worse than RTN on those rows.  Then
``W_l <- W_l diag(s)`` and ``diag(s)^-1`` is absorbed by the op that produces
``X``.  Which producers can absorb it is data (:data:`ABSORBERS`), tried in
order; the last entry inserts a Multiply on the activation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from . import graph
from .config import CompressWeightsMode
from .lowering import quantize_dequantize
from .threads import in_order

logger = logging.getLogger("optimum_wc")

ALPHAS = tuple(round(0.1 * i, 2) for i in range(11))
SEARCH_ROWS = 256  # calibration rows (tokens) of the search
SEARCH_OUT_ROWS = 256  # weight rows of the search, spread over the group's layers: the loss is a sum over rows


@dataclass(frozen=True)
class Absorber:
    """A graph pattern whose op can take the inverse AWQ scale, and how (a graph.py edit)."""

    name: str
    matches: Callable[[Any, Sequence[Any]], bool]
    absorb: Callable[[Any, Sequence[Any], np.ndarray, dict], None]


ABSORBERS: tuple[Absorber, ...] = (
    Absorber("norm gain (Multiply by a constant)", graph.is_constant_scaling, graph.scale_constant_operand),
    Absorber("gated linear (Multiply fed by a MatMul)", graph.is_gated_linear, graph.scale_gated_linear_rows),
    Absorber("inserted Multiply", lambda producer, consumers: True, graph.insert_activation_scale),
)


def smoothing_scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """``s = m^alpha`` normalised so that ``max(s) * min(s) = 1`` (keeps weights and activations balanced)."""
    m = np.maximum(mean_abs.astype(np.float64), 1e-8) ** alpha
    s = m / np.sqrt(m.max() * m.min())
    return s.astype(np.float32)


def awq_loss(weights: Sequence[np.ndarray], group_sizes: Sequence[int], x: np.ndarray, s: np.ndarray,
             mode: CompressWeightsMode) -> float:
    """``sum_l || (Q(W_l s) / s - W_l) X^T ||^2 / N`` for [out, C] weights and ``x [N, C]``."""
    total = 0.0
    for w, group_size in zip(weights, group_sizes):
        deq = quantize_dequantize(w * s, mode, group_size, axis=1) / s
        diff = x @ (deq - w).T
        total += float(np.vdot(diff, diff))
    return total / max(x.shape[0], 1)


def search_scales(weights: Sequence[np.ndarray], group_sizes: Sequence[int], x: np.ndarray, mean_abs: np.ndarray,
                  mode: CompressWeightsMode) -> tuple[np.ndarray, float, float]:
    """Best scales over :data:`ALPHAS`; returns (s, alpha, relative loss vs RTN)."""
    rows = x if x.shape[0] <= SEARCH_ROWS else x[np.linspace(0, x.shape[0] - 1, SEARCH_ROWS).astype(np.int64)]
    weights = search_rows(weights)
    best = (np.ones_like(mean_abs, dtype=np.float32), 0.0, None)
    base = None
    for alpha in ALPHAS:
        s = smoothing_scales(mean_abs, alpha) if alpha else np.ones(mean_abs.shape, np.float32)
        loss = awq_loss(weights, group_sizes, rows, s, mode)
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


def apply_awq(model, plans, stats, mode: CompressWeightsMode) -> list[dict]:
    """Smooth every group of 4-bit MatMuls sharing an input; returns one record per group (for the log/report).

    ``plans`` are planning.LayerPlan objects; only layers planned in ``mode``
    with 2-D weights take part; a group is all such layers fed by one input.
    """
    nodes = graph.ops_by_name(model)
    all_sites_by_op = {n: p.site for p in plans for n in p.site.op_names}
    groups: dict[tuple, list] = {}
    for p in plans:
        if p.mode is mode and p.site.kind == "matmul" and len(p.site.shape) == 2 and p.site.name in stats:
            groups.setdefault(graph.activation_source(nodes[p.site.op_names[0]]), []).append(p)
    records = []

    def searchable():
        """Groups to search, with copies of their weights read now (after every earlier group's edits)."""
        for key, members in groups.items():
            producer = nodes[key[0]]
            consumers = [nodes[n] for p in members for n in p.site.op_names]
            st = stats[members[0].site.name]
            names = [p.site.name for p in members]
            if st.rows.shape[0] == 0 or not any(a.matches(producer, consumers) for a in ABSORBERS):
                note = "no calibration rows" if st.rows.shape[0] == 0 else "no absorber"
                records.append({"input": key[0], "layers": names, "alpha": None, "absorbed_by": None, "note": note})
                continue
            weights = [_as_out_in(graph.read_weight(p.site), p.site.reduction_axis) for p in members]
            yield key, members, producer, consumers, st, weights

    def search(item):
        _key, members, _producer, _consumers, st, weights = item
        return search_scales(weights, [p.group_size for p in members], st.rows, st.mean_abs, mode)

    # A group's search reads only its own weights, which no later group edits (absorbers are upstream
    # producers), so searches run ahead on the thread pool and edits are applied here, in order.
    for (key, members, producer, consumers, _st, weights), (s, alpha, rel) in in_order(search, searchable()):
        names = [p.site.name for p in members]
        absorber = next((a for a in ABSORBERS if a.matches(producer, consumers)), None)
        if alpha == 0.0 or absorber is None:
            records.append({"input": key[0], "layers": names, "alpha": 0.0, "absorbed_by": None})
            continue
        absorber.absorb(producer, consumers, 1.0 / s, {"all_sites_by_op": all_sites_by_op})
        for p, w in zip(members, weights):
            graph.set_float_weight(p.site, _from_out_in(w * s, p.site.reduction_axis))
        records.append({"input": key[0], "layers": names, "alpha": alpha, "loss_vs_rtn": round(rel, 4),
                        "absorbed_by": absorber.name})
    return records


def _as_out_in(w: np.ndarray, axis: int) -> np.ndarray:
    return np.array(w.T if axis % 2 == 0 else w, dtype=np.float32)


def _from_out_in(w: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(w.T) if axis % 2 == 0 else w
