"""Where the weights are: reading the OpenVINO graph, never changing its structure.

* :func:`find_weight_sites` lists the weights to compress: float constants
  feeding a MatMul (either ``transpose``) or the table of a Gather (an
  embedding), looked up through Convert nodes, in topological order.
  MatMuls that are not linear layers are recognised by graph patterns kept
  as data (:data:`SKIP_PATTERNS`).
* :func:`read_weight` reads one as float32; :func:`set_float_weight` swaps
  its constant for another float one (AWQ's rescaled weights).
* Helpers that name activations and positions (``activation_source``,
  ``topological_positions``, ``activation_channels``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ..quant.lowering import Bfloat16Bits, as_float32

FLOAT_TYPES = (ov.Type.f32, ov.Type.f16, ov.Type.bf16)
# Graph patterns whose MatMul is not a linear layer, as data: a MatMul whose
# output reaches one of `targets` through only `through` ops is skipped.
SKIP_PATTERNS: tuple[dict[str, Any], ...] = (
    {
        "name": "rotary position embedding",
        "through": frozenset({"Transpose", "Concat", "Convert", "Reshape", "Unsqueeze"}),
        "targets": frozenset({"Sin", "Cos"}),
        "max_depth": 3,
    },
)
LOOK_THROUGH = ("Convert",)


@dataclass
class WeightSite:
    """One float weight constant and the ops that use it as a weight."""

    name: str  # friendly name of the Constant
    const: Any  # the openvino Constant node
    kind: str  # "matmul" or "embedding"
    reduction_axis: int  # the input-channel axis (non-negative)
    shape: tuple[int, ...]
    element_type: Any
    op_names: list[str] = field(default_factory=list)  # consumers, first one first
    op_types: list[str] = field(default_factory=list)
    op_indices: list[int] = field(default_factory=list)  # topological positions of the consumers
    # float32 -> float32 edits not yet made to the constant: read_weight applies them (see edit_float_weight)
    pending: list[Callable[[np.ndarray], np.ndarray]] = field(default_factory=list)

    @property
    def num_weights(self) -> int:
        return int(np.prod(self.shape))

    @property
    def in_channels(self) -> int:
        return self.shape[self.reduction_axis]


def source_constant(output) -> Any | None:
    """The Constant behind ``output``, looking through Convert nodes, else None."""
    node = output.get_node()
    while node.get_type_name() in LOOK_THROUGH:
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def skip_reason(node) -> str | None:
    """The name of the :data:`SKIP_PATTERNS` entry ``node`` (a MatMul) matches: not a linear layer; else None."""
    for pattern in SKIP_PATTERNS:
        queue = deque([(node, 0)])
        while queue:
            current, depth = queue.popleft()
            for out in current.outputs():
                for target in out.get_target_inputs():
                    t = target.get_node()
                    if t.get_type_name() in pattern["targets"]:
                        return pattern["name"]
                    if t.get_type_name() in pattern["through"] and depth + 1 < pattern["max_depth"]:
                        queue.append((t, depth + 1))
    return None


def weight_of(node) -> tuple[Any, int, int] | None:
    """(constant, port, reduction axis) if ``node`` is a MatMul or Gather with a float constant weight."""
    kind = node.get_type_name()
    if kind == "MatMul":
        attrs = node.get_attributes()
        consts = [source_constant(node.input_value(p)) for p in (0, 1)]
        for port, other in ((1, 0), (0, 1)):
            const = consts[port]
            if const is None or consts[other] is not None:
                continue
            rank = len(const.get_output_shape(0))
            if rank < 2:
                return None
            if port == 1:
                axis = rank - 1 if attrs["transpose_b"] else rank - 2
            else:
                axis = rank - 2 if attrs["transpose_a"] else rank - 1
            return const, port, axis
        return None
    if kind == "Gather":
        const = source_constant(node.input_value(0))
        if const is None or source_constant(node.input_value(1)) is not None:
            return None
        axis_const = source_constant(node.input_value(2))
        if axis_const is None or int(np.asarray(axis_const.get_data()).reshape(-1)[0]) != 0:
            return None
        if len(const.get_output_shape(0)) != 2:
            return None
        return const, 0, 1
    return None


def find_weight_sites(model) -> tuple[list[WeightSite], list[tuple[str, str]]]:
    """Weighted MatMul/Gather constants in topological order, and the skipped ones with the reason.

    A constant shared by several ops (tied embeddings and lm_head) is one
    site, placed where it is first used.
    """
    sites: dict[str, WeightSite] = {}
    skipped: list[tuple[str, str]] = []
    for index, node in enumerate(model.get_ordered_ops()):
        found = weight_of(node)
        if found is None:
            continue
        const, _port, axis = found
        name = const.get_friendly_name()
        if const.get_element_type() not in FLOAT_TYPES:
            continue  # already integer: left as it is
        reason = skip_reason(node) if node.get_type_name() == "MatMul" else None
        if reason:
            skipped.append((node.get_friendly_name(), reason))
            continue
        if name not in sites:
            sites[name] = WeightSite(
                name=name,
                const=const,
                kind="matmul" if node.get_type_name() == "MatMul" else "embedding",
                reduction_axis=axis,
                shape=tuple(int(d) for d in const.get_output_shape(0)),
                element_type=const.get_element_type(),
            )
        sites[name].op_names.append(node.get_friendly_name())
        sites[name].op_types.append(node.get_type_name())
        sites[name].op_indices.append(index)
    return list(sites.values()), skipped


def ops_by_name(model) -> dict[str, Any]:
    return {op.get_friendly_name(): op for op in model.get_ops()}


def activation_input(op) -> Any:
    """The non-constant input (an Output) of a weighted MatMul."""
    found = weight_of(op)
    if found is None or op.get_type_name() != "MatMul":
        raise ValueError(f"{op.get_friendly_name()} is not a MatMul with a constant weight")
    return op.input_value(1 - found[1])


def activation_source(op) -> tuple[str, int]:
    """(producer friendly name, output index) of a weighted MatMul's activation input."""
    source = activation_input(op)
    return source.get_node().get_friendly_name(), source.get_index()


def activation_channels(nodes: dict[str, Any], source: tuple[str, int]) -> int:
    """The (static) channel count, last dimension, of the activation ``source`` (``nodes``: :func:`ops_by_name`)."""
    out = nodes[source[0]].output(source[1])
    last = out.get_partial_shape()[-1]
    if last.is_dynamic:
        raise ValueError(f"the input of the MatMuls fed by {source[0]} has a dynamic channel dimension")
    return last.get_length()


def topological_positions(model) -> dict[str, int]:
    """Friendly name -> position in the model's topological order."""
    return {op.get_friendly_name(): i for i, op in enumerate(model.get_ordered_ops())}


def read_weight(site: WeightSite) -> np.ndarray:
    """The weight as float32 (a view when it already is float32), with its pending edits made."""
    const = site.const
    if const.get_element_type() == ov.Type.bf16:  # decoded straight from the constant's memory: one float32 copy
        data = as_float32(stored_weight(site)).reshape(site.shape)
    else:
        data = const.get_data()
        data = data if data.dtype == np.float32 else data.astype(np.float32)
    for edit in site.pending:  # exactly what set_float_weight(site, edit(read_weight(site))) would have stored
        data = np.ascontiguousarray(edit(data), dtype=np.float32)
    return data


def stored_weight(site: WeightSite) -> np.ndarray:
    """The weight as it is stored, without a copy: float32/float16 arrays, bfloat16 as :class:`Bfloat16Bits`."""
    data = site.const.get_tensor_view().data
    if site.const.get_element_type() == ov.Type.bf16:  # the binding shows bfloat16 as float16: reinterpret the bits
        return data.view(np.uint16).view(Bfloat16Bits)
    return data


def set_float_weight(site: WeightSite, weight: np.ndarray) -> None:
    """Replace ``site``'s weight by a float32 constant holding ``weight`` (same shape)."""
    new = ops.constant(np.ascontiguousarray(weight, dtype=np.float32), name=site.name)
    for target in list(site.const.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))
    site.const = new
    site.element_type = ov.Type.f32
    site.pending = []


def edit_float_weight(site: WeightSite, edit: Callable[[np.ndarray], np.ndarray], lazy: bool) -> None:
    """``site``'s weight becomes ``edit(weight)`` (float32 in, float32 out).

    ``lazy``: the edit is kept pending and made by every later
    :func:`read_weight`, so no float32 copy of the weight is held meanwhile;
    the graph keeps the old constant, so only for models that are not run
    again before the weight is compressed.  Both give the same float32 values.
    """
    if lazy:
        site.pending.append(edit)
    else:
        set_float_weight(site, edit(read_weight(site)))
