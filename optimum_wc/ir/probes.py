"""Probes: the IR cut down to in-graph reductions of MatMul inputs, and where layer-wise passes may start.

:func:`statistics_model` turns a stateful causal-LM IR into a stateless
model whose outputs are reductions (moments, block Grams, row gathers,
``X^T X``) of chosen activations; :func:`pass_boundaries` finds, for each
layer-wise pass, the residual-stream tensor it can start from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Any, Iterable, Sequence

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from .sites import ops_by_name, weight_of

ROWS_INPUT = "optimum_wc_rows"
BOUNDARY_INPUT = "optimum_wc_boundary"
REFERENCE_INPUT = "optimum_wc_reference_"  # + the probe's position: a cross probe's reference activation


def reference_input(position: int) -> str:
    """Name of the input that feeds the reference activation ``R`` of the ``position``-th probe (``cross``)."""
    return f"{REFERENCE_INPUT}{position}"


@dataclass(frozen=True)
class Probe:
    """What to reduce, inside the graph, from one activation ``X`` (``source``: producer name, output index).

    ``X`` is seen as ``[batch, tokens, C]`` (a 2-D input as one sequence) and
    reduced in float32:

    * ``moments``: per sample, over tokens, ``sum x``, ``sum x^2``, ``sum |x|``, ``max |x|``: ``[batch, 4, C]``;
    * ``gram_block``: the block diagonal of ``X^T X`` over all tokens, blocks of that size: ``[C/b, b, b]``;
    * ``rows``: ``X`` at the token positions fed to the :data:`ROWS_INPUT` input: ``[batch, k, C]``;
    * ``xtx``: the full ``X^T X`` over all tokens: ``[C, C]``;
    * ``cross``: ``(R - X)^T X`` over all tokens, ``[C, C]``, where ``R`` (the same
      activation in a reference model, ``[batch, tokens, C]``) is fed to the input
      :func:`reference_input` of the probe's position (GPTAQ's float-against-quantized term);
    * ``raw``: ``X`` itself, ``[batch, tokens, C]``.
    """

    source: tuple[str, int]
    moments: bool = False
    gram_block: int = 0
    rows: bool = False
    xtx: bool = False
    cross: bool = False
    raw: bool = False


def _drop_state(model) -> bool:
    """Replace every ReadValue by its initial value (an empty KV cache); False if one has no initializer.

    A statistics pass starts every sample from an empty cache, so the state
    is only ever its initial value; without it the model needs no state reset
    and its results do not depend on earlier calls.
    """
    reads = [op for op in model.get_ops() if op.get_type_name() == "ReadValue"]
    if any(op.get_input_size() == 0 for op in reads):
        return False
    for op in reads:
        op.output(0).replace(op.input_value(0))
    return True


def _as_sequences(x, channels: int):
    """``x`` as ``[batch, tokens, C]`` float32."""
    if x.get_element_type() != ov.Type.f32:
        x = ops.convert(x, ov.Type.f32).output(0)
    rank = x.get_partial_shape().rank.get_length()
    if rank == 2:
        return ops.unsqueeze(x, ops.constant(np.array([0], np.int64))).output(0)
    if rank == 3:
        return x
    return ops.reshape(x, ops.constant(np.array([0, -1, channels], np.int64)), special_zero=True).output(0)


def statistics_model(model, probes: Iterable[Probe], boundary_in: str | None = None, boundary_out: str | None = None):
    """A copy of ``model`` whose outputs are the reductions of ``probes`` (and the raw ``boundary_out`` tensor).

    The model's own outputs (logits) and KV-cache state are dropped, so only
    what the reductions need is computed.  With ``boundary_in`` that node's
    output becomes the input :data:`BOUNDARY_INPUT`: everything upstream of it
    is not run (see :func:`pass_boundaries`).  Returns the model and, per
    ``(source, kind)`` with kind in moments/gram/rows/xtx/cross/raw (and ``("boundary",
    "boundary")``), the index of its output.
    """
    m = model.clone()
    by_name = ops_by_name(m)
    stateless = _drop_state(m)
    params = list(m.get_parameters())
    replaced: dict[str, Any] = {}
    if boundary_in is not None:
        out = by_name[boundary_in].output(0)
        p = ops.parameter(out.get_partial_shape(), out.get_element_type(), name=BOUNDARY_INPUT)
        p.output(0).get_tensor().set_names({BOUNDARY_INPUT})
        out.replace(p.output(0))
        params.append(p)
        replaced[boundary_in] = p.output(0)
    rows_param = None
    results, layout = [], {}
    axis1 = ops.constant(np.array([1], np.int64))

    def emit(key, node) -> None:
        layout[key] = len(results)
        results.append(ops.result(node))

    for position, probe in enumerate(probes):
        node, index = probe.source
        x = replaced.get(node) if node in replaced else by_name[node].output(index)
        channels = x.get_partial_shape()[-1].get_length()
        x3 = _as_sequences(x, channels)
        if probe.moments:
            absx = ops.abs(x3)
            parts = [ops.reduce_sum(x3, axis1, False), ops.reduce_sum(ops.multiply(x3, x3), axis1, False),
                     ops.reduce_sum(absx, axis1, False), ops.reduce_max(absx, axis1, False)]
            emit((probe.source, "moments"), ops.concat([ops.unsqueeze(t, axis1) for t in parts], 1))
        if probe.gram_block:
            b = probe.gram_block
            blocks = ops.reshape(x3, ops.constant(np.array([-1, channels // b, b], np.int64)), False)
            blocks = ops.transpose(blocks, ops.constant(np.array([1, 0, 2], np.int64)))
            emit((probe.source, "gram"), ops.matmul(blocks, blocks, transpose_a=True, transpose_b=False))
        if probe.rows:
            if rows_param is None:
                rows_param = ops.parameter([-1], ov.Type.i64, name=ROWS_INPUT)
                rows_param.output(0).get_tensor().set_names({ROWS_INPUT})
                params.append(rows_param)
            emit((probe.source, "rows"), ops.gather(x3, rows_param, ops.constant(np.array(1, np.int64))))
        if probe.xtx:
            flat = ops.reshape(x3, ops.constant(np.array([-1, channels], np.int64)), False)
            emit((probe.source, "xtx"), ops.matmul(flat, flat, transpose_a=True, transpose_b=False))
        if probe.cross:
            ref = ops.parameter([-1, -1, channels], ov.Type.f32, name=reference_input(position))
            ref.output(0).get_tensor().set_names({reference_input(position)})
            params.append(ref)
            flat = ops.reshape(x3, ops.constant(np.array([-1, channels], np.int64)), False)
            drift = ops.reshape(ops.subtract(ref, x3), ops.constant(np.array([-1, channels], np.int64)), False)
            emit((probe.source, "cross"), ops.matmul(drift, flat, transpose_a=True, transpose_b=False))
        if probe.raw:
            emit((probe.source, "raw"), x3)
    if boundary_out is not None:
        emit(("boundary", "boundary"), by_name[boundary_out].output(0))
    sinks = [] if stateless else list(m.get_sinks())
    return ov.Model(results, sinks, params, "optimum_wc_statistics"), layout


def _token_roots(model) -> list[str]:
    params = list(model.get_parameters())
    ids = [p for p in params if "input_ids" in p.output(0).get_names()]
    return [p.get_friendly_name() for p in (ids or params)]


class _DominatorTree:
    """Immediate dominators of the token data-flow graph (root: the token input; shape computations carry no data)."""

    ROOT = "<tokens>"

    def __init__(self, model):
        roots = set(_token_roots(model))
        self.idom: dict[str, str] = {}
        self.depth: dict[str, int] = {self.ROOT: 0}
        self.nodes: dict[str, Any] = {}
        for op in model.get_ordered_ops():  # topological: every predecessor is placed first
            name = op.get_friendly_name()
            self.nodes[name] = op
            kind = op.get_type_name()
            if kind == "Parameter":
                if name in roots:
                    self.idom[name], self.depth[name] = self.ROOT, 1
                continue
            if kind in ("ShapeOf", "Constant"):
                continue
            preds = [v.get_node().get_friendly_name() for v in op.input_values()]
            preds = [p for p in preds if p in self.depth]
            if preds:
                d = reduce(self.lca, preds)
                self.idom[name], self.depth[name] = d, self.depth[d] + 1

    def lca(self, a: str, b: str) -> str:
        """The nearest common dominator of ``a`` and ``b``."""
        while a != b:
            if self.depth[a] >= self.depth[b]:
                a = self.idom[a]
            else:
                b = self.idom[b]
        return a

    def dominates(self, a: str, b: str) -> bool:
        while self.depth[b] > self.depth[a]:
            b = self.idom[b]
        return a == b


def pass_boundaries(model, passes: Sequence[Sequence[tuple[str, int]]]) -> list[str | None]:
    """For each pass (a list of activation sources), a node every token-data path to those sources crosses.

    This is the nearest common dominator of the sources in the data-flow
    graph rooted at the token input (shape computations carry no data): in a
    decoder, the residual stream at the start of a block.  The value of
    pass ``j``'s boundary, computed in pass ``j``, is the input of pass
    ``j + 1``, which then runs only the graph between the two
    (:func:`statistics_model`).  A boundary is a single-output node that is
    not itself a weighted MatMul (an adapter may later be added behind one);
    None where no such node exists.
    """
    tree = _DominatorTree(model)
    depth, root = tree.depth, tree.ROOT

    def acceptable(name: str) -> bool:
        op = tree.nodes[name]
        return op.get_output_size() == 1 and op.get_type_name() != "Parameter" and weight_of(op) is None

    out: list[str | None] = []
    for sources in passes:
        names = [n for n, _ in sources]
        if not names or any(n not in depth for n in names):
            out.append(None)
            continue
        d = reduce(tree.lca, names)
        while d != root and not acceptable(d):
            d = tree.idom[d]
        out.append(None if d == root else d)

    # pass j + 1 may start from boundary j only if that dominates all its sources and its own boundary
    checked: list[str | None] = []
    for j, b in enumerate(out):
        if b is not None and j + 1 < len(passes):
            later = [n for n, _ in passes[j + 1]] + ([out[j + 1]] if out[j + 1] else [])
            if not all(n in depth and tree.dominates(b, n) for n in later):
                b = None
        checked.append(b if j + 1 < len(passes) else None)
    return checked


def statistics_segments(model, passes: Sequence[Sequence[tuple[str, int]]]) -> list[tuple[str | None, list]]:
    """``passes`` (activation sources in topological order) cut into segments that run one after another.

    Returns ``(start, sources)`` per segment: the segment runs from the value
    of node ``start`` (None: from the tokens), which the previous segment
    outputs, to its sources.  A pass starts a new segment at the nearest
    common dominator of its sources (in a decoder: the residual stream
    before them) when that node is acceptable as a boundary and the
    previous segment's start dominates it; otherwise it joins the previous
    segment.  Unlike :func:`pass_boundaries` nothing is compressed between
    segments, so each starts where its own sources begin.
    """
    tree = _DominatorTree(model)

    def acceptable(name: str) -> bool:
        op = tree.nodes[name]
        return op.get_output_size() == 1 and op.get_type_name() != "Parameter" and weight_of(op) is None

    segments: list[tuple[str | None, list]] = []
    for sources in passes:
        names = [n for n, _ in sources]
        start = None
        if segments and names and all(n in tree.depth for n in names):
            start = reduce(tree.lca, names)
            while start != tree.ROOT and not acceptable(start):
                start = tree.idom[start]
            previous = segments[-1][0]
            if start in (tree.ROOT, previous) or (previous is not None and not tree.dominates(previous, start)):
                start = None
        if segments and start is None:
            segments[-1][1].extend(sources)
        else:
            segments.append((start, list(sources)))
    return segments
