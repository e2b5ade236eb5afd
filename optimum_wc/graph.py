"""Every read and edit of the OpenVINO graph lives here.

* :func:`find_weight_sites` lists the weights to compress: float constants
  feeding a MatMul (either ``transpose``) or the table of a Gather (an
  embedding), looked up through Convert nodes, in topological order.
* :func:`replace_with_compressed` swaps one float constant for the
  decompression subgraph that OpenVINO's CPU plugin fuses into its fully
  connected and gather kernels::

      Constant(u4|i4|u8|i8) -> Convert(f16) [-> Subtract(Convert(zero point))]
          -> Multiply(scale f16) [-> Reshape to the original shape]
          [-> Convert(original float type)] -> MatMul | Gather
"""

from __future__ import annotations

import json
from collections import deque
from functools import reduce
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino import op as ov_op

from .config import CompressWeightsMode
from .lowering import CompressedWeight

FLOAT_TYPES = (ov.Type.f32, ov.Type.f16, ov.Type.bf16)
RT_INFO_KEY = "optimum_wc"

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
_LOOK_THROUGH = ("Convert",)


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

    @property
    def num_weights(self) -> int:
        return int(np.prod(self.shape))

    @property
    def in_channels(self) -> int:
        return self.shape[self.reduction_axis]


def _source_constant(output) -> Any | None:
    """The Constant behind ``output``, looking through Convert nodes, else None."""
    node = output.get_node()
    while node.get_type_name() in _LOOK_THROUGH:
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def _matches_skip_pattern(node) -> str | None:
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


def _weight_of(node) -> tuple[Any, int, int] | None:
    """(constant, port, reduction axis) if ``node`` is a MatMul or Gather with a float constant weight."""
    kind = node.get_type_name()
    if kind == "MatMul":
        attrs = node.get_attributes()
        consts = [_source_constant(node.input_value(p)) for p in (0, 1)]
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
        const = _source_constant(node.input_value(0))
        if const is None or _source_constant(node.input_value(1)) is not None:
            return None
        axis_const = _source_constant(node.input_value(2))
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
        found = _weight_of(node)
        if found is None:
            continue
        const, _port, axis = found
        name = const.get_friendly_name()
        if const.get_element_type() not in FLOAT_TYPES:
            continue  # already integer: left as it is
        reason = _matches_skip_pattern(node) if node.get_type_name() == "MatMul" else None
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
    found = _weight_of(op)
    if found is None or op.get_type_name() != "MatMul":
        raise ValueError(f"{op.get_friendly_name()} is not a MatMul with a constant weight")
    return op.input_value(1 - found[1])


def activation_source(op) -> tuple[str, int]:
    """(producer friendly name, output index) of a weighted MatMul's activation input."""
    source = activation_input(op)
    return source.get_node().get_friendly_name(), source.get_index()


def read_weight(site: WeightSite) -> np.ndarray:
    """The weight as float32 (a view when it already is float32)."""
    const = site.const
    if const.get_element_type() == ov.Type.bf16:
        raw = np.frombuffer(const.get_tensor_view().data.tobytes(), dtype=np.uint16)
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(site.shape)
    data = const.get_data()
    return data if data.dtype == np.float32 else data.astype(np.float32)


_OV_TYPES = {
    (CompressWeightsMode.INT4_ASYM, "codes"): ov.Type.u4,
    (CompressWeightsMode.INT4_SYM, "codes"): ov.Type.i4,
    (CompressWeightsMode.INT8_ASYM, "codes"): ov.Type.u8,
    (CompressWeightsMode.INT8_SYM, "codes"): ov.Type.i8,
}


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack 4-bit values two per byte, element 0 in the low nibble (OpenVINO's u4/i4 layout)."""
    flat = values.reshape(-1).view(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8)


def integer_constant(values: np.ndarray, element_type, name: str):
    """A Constant of ``element_type`` (u4/i4/u8/i8) holding ``values`` (uint8/int8)."""
    shape = ov.Shape(list(values.shape))
    if element_type in (ov.Type.u4, ov.Type.i4):
        tensor = ov.Tensor(pack_nibbles(values), shape, element_type)
    else:
        tensor = ov.Tensor(np.ascontiguousarray(values), shape, element_type)
    const = ov_op.Constant(tensor, shared_memory=False)
    const.set_friendly_name(name)
    return const


def decompression_subgraph(cw: CompressedWeight, name: str):
    """Build ``codes -> Convert -> [Subtract zp] -> Multiply scale -> [Reshape]`` (output f16)."""
    code_type = _OV_TYPES[(cw.mode, "codes")]
    weight = ops.convert(integer_constant(cw.codes, code_type, name), ov.Type.f16, name=f"{name}/convert")
    if cw.zero_point is not None:
        zp_const = integer_constant(cw.zero_point, code_type, f"{name}/zero_point")
        zp = ops.convert(zp_const, ov.Type.f16, name=f"{name}/zero_point/convert")
        weight = ops.subtract(weight, zp, name=f"{name}/zero_point/subtract")
    # (contiguous: the OpenVINO binding mistypes a strided float16 array as i16)
    scale = ops.constant(np.ascontiguousarray(cw.scale, dtype=np.float16), name=f"{name}/scale")
    weight = ops.multiply(weight, scale, name=f"{name}/fq_weights")
    if cw.group_size != -1:
        shape = ops.constant(np.array(cw.original_shape, dtype=np.int64), name=f"{name}/reshape/shape")
        weight = ops.reshape(weight, shape, special_zero=False, name=f"{name}/reshape")
    return weight


def replace_with_compressed(site: WeightSite, cw: CompressedWeight) -> None:
    """Swap ``site``'s float constant for its decompression subgraph, in place.

    Convert nodes that only cast the old constant to f16 are bypassed; a
    final Convert restores the consumers' float type (f32 or f16 IR alike).
    """
    new = decompression_subgraph(cw, site.name)
    converted: dict[Any, Any] = {}

    def output_as(element_type):
        if element_type == ov.Type.f16:
            return new.output(0)
        if element_type not in converted:
            converted[element_type] = ops.convert(new, element_type, name=f"{site.name}/fq_weights/convert").output(0)
        return converted[element_type]

    def rewire(node) -> None:
        for target in list(node.output(0).get_target_inputs()):
            consumer = target.get_node()
            if consumer.get_type_name() == "Convert" and consumer.get_output_element_type(0) == ov.Type.f16:
                rewire(consumer)
            elif consumer.get_type_name() == "Convert" and consumer.get_output_element_type(0) in FLOAT_TYPES:
                target.replace_source_output(new.output(0))  # keep it: it is now the cast f16 -> float type
            else:
                target.replace_source_output(output_as(node.get_output_element_type(0)))

    rewire(site.const)
    site.const = None  # drop our reference: the float data is freed with the node


def write_rt_info(model, config_dict: dict, layers: Iterable[dict]) -> None:
    """Record the config and the per-layer choices in the IR (saved into the XML)."""
    model.set_rt_info(json.dumps(config_dict, sort_keys=True), [RT_INFO_KEY, "config"])
    model.set_rt_info(json.dumps(list(layers)), [RT_INFO_KEY, "layers"])


def read_rt_info(model) -> tuple[dict, list[dict]] | None:
    """The config and per-layer records written by :func:`write_rt_info`, or None."""
    if not model.has_rt_info([RT_INFO_KEY, "config"]):
        return None
    config = json.loads(model.get_rt_info([RT_INFO_KEY, "config"]).astype(str))
    layers = json.loads(model.get_rt_info([RT_INFO_KEY, "layers"]).astype(str))
    return config, layers


# -- edits for data-aware algorithms (AWQ): scale absorption and float weight updates ---------


def _only_feeds(producer, consumers) -> bool:
    """True when every user of ``producer``'s output is one of ``consumers``."""
    names = {c.get_friendly_name() for c in consumers}
    return all(t.get_node().get_friendly_name() in names for t in producer.output(0).get_target_inputs())


def _constant_operand(node) -> tuple[int, Any] | None:
    for port in range(node.get_input_size()):
        const = _source_constant(node.input_value(port))
        if const is not None and const.get_element_type() in FLOAT_TYPES:
            return port, const
    return None


def is_constant_scaling(producer, consumers) -> bool:
    """``x * c`` with a float constant ``c`` varying only along the last axis (a norm's gain)."""
    if producer.get_type_name() != "Multiply" or not _only_feeds(producer, consumers):
        return False
    found = _constant_operand(producer)
    if found is None:
        return False
    shape = list(found[1].get_output_shape(0))
    channels = producer.get_output_partial_shape(0)[-1]
    return bool(shape) and all(d == 1 for d in shape[:-1]) and channels.is_static and shape[-1] == channels.get_length()


def scale_constant_operand(producer, consumers, factor: np.ndarray, context: dict) -> None:
    """Multiply the constant operand of ``producer`` by ``factor`` along its last axis."""
    port, const = _constant_operand(producer)
    data = np.asarray(const.get_data(), dtype=np.float32) * factor.astype(np.float32)
    new = ops.constant(data.astype(np.float32), name=f"{const.get_friendly_name()}/awq")
    producer.input(port).replace_source_output(new.output(0))


def _gating_matmul(producer):
    """The MatMul with a constant weight that feeds ``producer`` directly and nothing else, if any."""
    for port in range(producer.get_input_size()):
        node = producer.input_value(port).get_node()
        if node.get_type_name() == "MatMul" and _weight_of(node) is not None and len(node.output(0).get_target_inputs()) == 1:
            return node
    return None


def is_gated_linear(producer, consumers) -> bool:
    """``act(gate) * up(x)``: a Multiply fed by a weighted MatMul whose output it alone uses."""
    return (
        producer.get_type_name() == "Multiply"
        and _only_feeds(producer, consumers)
        and _constant_operand(producer) is None
        and _gating_matmul(producer) is not None
    )


def scale_gated_linear_rows(producer, consumers, factor: np.ndarray, context: dict) -> None:
    """Scale the output channels of the MatMul feeding ``producer`` by ``factor``."""
    matmul = _gating_matmul(producer)
    site = context["all_sites_by_op"].get(matmul.get_friendly_name())
    if site is None:
        raise ValueError(f"no weight site for {matmul.get_friendly_name()}")
    w = np.array(read_weight(site), dtype=np.float32)
    out_axis = 1 - site.reduction_axis % 2
    shape = [1, 1]
    shape[out_axis] = -1
    set_float_weight(site, w * factor.reshape(shape))


def insert_activation_scale(producer, consumers, factor: np.ndarray, context: dict) -> None:
    """Insert ``x * factor`` between the activation and the given MatMuls."""
    source = activation_input(consumers[0])
    scale = ops.constant(factor.astype(np.float32), name=f"{source.get_node().get_friendly_name()}/awq_scale")
    if source.get_element_type() != ov.Type.f32:
        scale = ops.convert(scale, source.get_element_type())
    scaled = ops.multiply(source, scale, name=f"{source.get_node().get_friendly_name()}/awq_multiply")
    for matmul in consumers:
        port = 1 - _weight_of(matmul)[1]
        matmul.input(port).replace_source_output(scaled.output(0))


def set_float_weight(site: WeightSite, weight: np.ndarray) -> None:
    """Replace ``site``'s weight by a float32 constant holding ``weight`` (same shape)."""
    new = ops.constant(np.ascontiguousarray(weight, dtype=np.float32), name=site.name)
    for target in list(site.const.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))
    site.const = new
    site.element_type = ov.Type.f32


# -- pre-quantized checkpoints (GPTQ act-order): reorder a MatMul's input channels --------------


def gather_matmul_inputs(site: WeightSite, indices: np.ndarray) -> list[str]:
    """Feed every MatMul that uses ``site``'s constant as its weight with its activation's channels in ``indices`` order.

    Inserts ``Gather(activation, indices, axis=<activation's reduction axis>)``
    before each such MatMul, so that the weight may then hold its input
    channels in that same order: ``x W^T == x[..., P] (W[:, P])^T`` for any
    permutation ``P``.  Call it before :func:`replace_with_compressed` (it walks
    from the constant, through Convert nodes, to the MatMuls).  Returns the
    names of the Gather nodes.
    """
    from .errors import ModelError

    indices = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
    if site.const is None:
        raise ModelError(f"{site.name}: the weight was already replaced; reorder the inputs before replacing it.")
    names: list[str] = []
    pending = [site.const]
    while pending:
        node = pending.pop()
        for target in node.output(0).get_target_inputs():
            consumer = target.get_node()
            kind = consumer.get_type_name()
            if kind in _LOOK_THROUGH:
                pending.append(consumer)
                continue
            if kind != "MatMul":
                raise ModelError(
                    f"{site.name} feeds a {kind} ({consumer.get_friendly_name()}), so its input channels cannot be "
                    "reordered with the activation; only MatMul weights can."
                )
            attrs = consumer.get_attributes()
            weight_port = target.get_index()
            act_port = 1 - weight_port
            if act_port == 0:
                axis = -2 if attrs["transpose_a"] else -1
            else:
                axis = -1 if attrs["transpose_b"] else -2
            activation = consumer.input_value(act_port)
            channels = activation.get_partial_shape()[axis] if activation.get_partial_shape().rank.is_static else None
            if channels is not None and channels.is_static and channels.get_length() != indices.size:
                raise ModelError(
                    f"{site.name}: {indices.size} channel indices for an activation with {channels.get_length()} "
                    f"channels at {consumer.get_friendly_name()}."
                )
            name = f"{site.name}/input_gather/{len(names)}" if names else f"{site.name}/input_gather"
            gather = ops.gather(
                activation,
                ops.constant(indices, name=f"{name}/indices"),
                ops.constant(np.array(axis, dtype=np.int64), name=f"{name}/axis"),
                name=name,
            )
            consumer.input(act_port).replace_source_output(gather.output(0))
            names.append(name)
    return names


# -- LoRA correction: a low-rank adapter branch beside a compressed MatMul ------------------------


def topological_positions(model) -> dict[str, int]:
    """Friendly name -> position in the model's topological order."""
    return {op.get_friendly_name(): i for i, op in enumerate(model.get_ordered_ops())}


def adapter_input(matmul) -> Any:
    """The activation input of a weighted MatMul that can take a LoRA adapter (first, untransposed input).

    Call it while the weight is still a float constant; raises ValueError otherwise.
    """
    found = _weight_of(matmul)
    if found is None or matmul.get_type_name() != "MatMul":
        raise ValueError(f"{matmul.get_friendly_name()} is not a MatMul with a constant weight")
    if found[1] != 1 or matmul.get_attributes()["transpose_a"]:
        raise ValueError(f"{matmul.get_friendly_name()}: the adapter needs the activation as the first, untransposed input")
    return matmul.input_value(0)


def add_lora_adapter(matmul, x, a: CompressedWeight, b: CompressedWeight, name: str) -> Any:
    """Add ``MatMul(MatMul(x, A^T), B^T)`` to the output of ``matmul`` (``x``: its activation, see :func:`adapter_input`).

    ``a`` [rank, in] and ``b`` [out, rank] are compressed weights, each built
    with :func:`decompression_subgraph` so the CPU plugin runs both adapter
    MatMuls as compressed fully connected layers.  Every former user of the
    MatMul's output now reads the sum.  Returns the Add node.
    """

    def weight(cw: CompressedWeight, suffix: str):
        node = decompression_subgraph(cw, f"{name}/{suffix}")
        if x.get_element_type() != ov.Type.f16:
            node = ops.convert(node, x.get_element_type(), name=f"{name}/{suffix}/fq_weights/convert")
        return node

    hidden = ops.matmul(x, weight(a, "lora_A"), transpose_a=False, transpose_b=True, name=f"{name}/lora_A/matmul")
    delta = ops.matmul(hidden, weight(b, "lora_B"), transpose_a=False, transpose_b=True, name=f"{name}/lora_B/matmul")
    targets = list(matmul.output(0).get_target_inputs())
    total = ops.add(matmul.output(0), delta, name=f"{name}/lora_add")
    for target in targets:
        target.replace_source_output(total.output(0))
    return total


# -- statistics models: the IR cut down to in-graph reductions of MatMul inputs ----------------

ROWS_INPUT = "optimum_wc_rows"
BOUNDARY_INPUT = "optimum_wc_boundary"


@dataclass(frozen=True)
class Probe:
    """What to reduce, inside the graph, from one activation ``X`` (``source``: producer name, output index).

    ``X`` is seen as ``[batch, tokens, C]`` (a 2-D input as one sequence) and
    reduced in float32:

    * ``moments``: per sample, over tokens, ``sum x``, ``sum x^2``, ``sum |x|``, ``max |x|``: ``[batch, 4, C]``;
    * ``gram_block``: the block diagonal of ``X^T X`` over all tokens, blocks of that size: ``[C/b, b, b]``;
    * ``rows``: ``X`` at the token positions fed to the :data:`ROWS_INPUT` input: ``[batch, k, C]``;
    * ``xtx``: the full ``X^T X`` over all tokens: ``[C, C]``.
    """

    source: tuple[str, int]
    moments: bool = False
    gram_block: int = 0
    rows: bool = False
    xtx: bool = False


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


def activation_channels(nodes: dict[str, Any], source: tuple[str, int]) -> int:
    """The (static) channel count, last dimension, of the activation ``source`` (``nodes``: :func:`ops_by_name`)."""
    out = nodes[source[0]].output(source[1])
    last = out.get_partial_shape()[-1]
    if last.is_dynamic:
        raise ValueError(f"the input of the MatMuls fed by {source[0]} has a dynamic channel dimension")
    return last.get_length()


def statistics_model(model, probes: Iterable[Probe], boundary_in: str | None = None, boundary_out: str | None = None):
    """A copy of ``model`` whose outputs are the reductions of ``probes`` (and the raw ``boundary_out`` tensor).

    The model's own outputs (logits) and KV-cache state are dropped, so only
    what the reductions need is computed.  With ``boundary_in`` that node's
    output becomes the input :data:`BOUNDARY_INPUT`: everything upstream of it
    is not run (see :func:`pass_boundaries`).  Returns the model and, per
    ``(source, kind)`` with kind in moments/gram/rows/xtx (and ``("boundary",
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

    for probe in probes:
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
    if boundary_out is not None:
        emit(("boundary", "boundary"), by_name[boundary_out].output(0))
    sinks = [] if stateless else list(m.get_sinks())
    return ov.Model(results, sinks, params, "optimum_wc_statistics"), layout


def _token_roots(model) -> list[str]:
    params = list(model.get_parameters())
    ids = [p for p in params if "input_ids" in p.output(0).get_names()]
    return [p.get_friendly_name() for p in (ids or params)]


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
    roots = set(_token_roots(model))
    idom: dict[str, str] = {}
    depth: dict[str, int] = {}

    def lca(a: str, b: str) -> str:
        while a != b:
            if depth[a] >= depth[b]:
                a = idom[a]
            else:
                b = idom[b]
        return a

    root = "<tokens>"
    depth[root] = 0
    nodes = {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        nodes[name] = op
        kind = op.get_type_name()
        if kind == "Parameter":
            if name in roots:
                idom[name], depth[name] = root, 1
            continue
        if kind in ("ShapeOf", "Constant"):
            continue
        preds = [v.get_node().get_friendly_name() for v in op.input_values()]
        preds = [p for p in preds if p in depth]
        if preds:
            d = reduce(lca, preds)
            idom[name], depth[name] = d, depth[d] + 1

    def acceptable(name: str) -> bool:
        op = nodes[name]
        return op.get_output_size() == 1 and op.get_type_name() != "Parameter" and _weight_of(op) is None

    out: list[str | None] = []
    for sources in passes:
        names = [n for n, _ in sources]
        if not names or any(n not in depth for n in names):
            out.append(None)
            continue
        d = reduce(lca, names)
        while d != root and not acceptable(d):
            d = idom[d]
        out.append(None if d == root else d)

    def dominates(a: str, b: str) -> bool:
        while depth[b] > depth[a]:
            b = idom[b]
        return a == b

    # pass j + 1 may start from boundary j only if that dominates all its sources and its own boundary
    checked: list[str | None] = []
    for j, b in enumerate(out):
        if b is not None and j + 1 < len(passes):
            later = [n for n, _ in passes[j + 1]] + ([out[j + 1]] if out[j + 1] else [])
            if not all(n in depth and dominates(b, n) for n in later):
                b = None
        checked.append(b if j + 1 < len(passes) else None)
    return checked
