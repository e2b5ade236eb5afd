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
from dataclasses import dataclass, field
from typing import Any, Iterable

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
    scale = ops.constant(cw.scale.astype(np.float16), name=f"{name}/scale")
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
