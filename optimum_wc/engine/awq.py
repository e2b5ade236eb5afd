"""AWQ applied to the graph: smooth each group of 4-bit MatMuls that share an input, before quantization.

The scales come from :func:`optimum_wc.quant.awq_search.search_scales`
(objective in its module); here they are applied: ``W_l <- W_l diag(s)`` and
``diag(s)^-1`` goes to the first of :data:`optimum_wc.ir.absorbers.ABSORBERS`
that the input's producer matches.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from ..config import CompressWeightsMode
from ..ir.absorbers import find_absorber
from ..ir.sites import activation_source, edit_float_weight, ops_by_name, read_weight
from ..quant.awq_search import search_scales, tied_means
from .threads import in_order


def apply_awq(model, plans, stats, mode: CompressWeightsMode, lazy: bool = False) -> list[dict]:
    """Smooth every group of 4-bit MatMuls sharing an input; returns one record per group (for the log/report).

    ``plans`` are planning.LayerPlan objects; only layers planned in ``mode``
    with 2-D weights take part; a group is all such layers fed by one input.
    ``lazy``: the weights' edits are kept pending until each weight is read
    for compression (:func:`~optimum_wc.ir.sites.edit_float_weight`), so no
    float32 copies pile up; only when the model is not run before then.
    """
    nodes = ops_by_name(model)
    all_sites_by_op = {n: p.site for p in plans for n in p.site.op_names}
    groups: dict[tuple, list] = {}
    for p in plans:
        if p.is_primary_matmul(mode) and p.site.name in stats:
            groups.setdefault(activation_source(nodes[p.site.op_names[0]]), []).append(p)
    records = []

    def searchable():
        """Groups to search, with copies of their weights read now (after every earlier group's edits)."""
        for key, members in groups.items():
            producer = nodes[key[0]]
            consumers = [nodes[n] for p in members for n in p.site.op_names]
            st = stats[members[0].site.name]
            names = [p.site.name for p in members]
            if st.rows.shape[0] == 0 or find_absorber(producer, consumers) is None:
                note = "no calibration rows" if st.rows.shape[0] == 0 else "no absorber"
                records.append({"input": key[0], "layers": names, "alpha": None, "absorbed_by": None, "note": note})
                continue
            weights = [_as_out_in(read_weight(p.site), p.site.reduction_axis) for p in members]
            ties = find_absorber(producer, consumers).ties
            mean_abs = st.mean_abs if ties is None else tied_means(st.mean_abs, ties(producer))
            yield key, members, producer, consumers, (st.rows, mean_abs), weights

    def search(item):
        _key, members, _producer, _consumers, (rows, mean_abs), weights = item
        return search_scales(weights, [p.group_size for p in members], rows, mean_abs, mode, members[0].codebook)

    # A group's search reads only its own weights, copied before any later group's edit. Absorbers edit
    # upstream producers: a norm, or an earlier group's weight along its *output* channels (this scales each
    # of its rows, and their errors, by a constant: its grid stays the same). So searches run ahead on the
    # thread pool and edits are applied here, in order; the result does not depend on the threading.
    with contextlib.closing(in_order(search, searchable())) as searched:  # stopped early: running searches finish
        for (key, members, producer, consumers, _st, weights), (s, alpha, rel) in searched:
            names = [p.site.name for p in members]
            absorber = find_absorber(producer, consumers)
            if alpha == 0.0 or absorber is None:
                records.append({"input": key[0], "layers": names, "alpha": 0.0, "absorbed_by": None})
                continue
            absorber.absorb(producer, consumers, 1.0 / s, {"all_sites_by_op": all_sites_by_op, "lazy": lazy})
            for p in members:
                edit_float_weight(p.site, functools.partial(_scale_inputs, s=s, axis=p.site.reduction_axis), lazy)
            stats[members[0].site.name].scale_channels(1.0 / s)  # the group now reads X / s (scale estimation's input)
            records.append({"input": key[0], "layers": names, "alpha": alpha, "loss_vs_rtn": round(rel, 4),
                            "absorbed_by": absorber.name})
    return records


def _scale_inputs(w: np.ndarray, s: np.ndarray, axis: int) -> np.ndarray:
    """``W diag(s)``: the input channels of ``w`` scaled by ``s``."""
    return _from_out_in(np.asarray(w.T if axis % 2 == 0 else w, dtype=np.float32) * s, axis)


def _as_out_in(w: np.ndarray, axis: int) -> np.ndarray:
    return np.array(w.T if axis % 2 == 0 else w, dtype=np.float32)


def _from_out_in(w: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(w.T) if axis % 2 == 0 else w
