"""The decompression subgraph: how a compressed weight is written into the IR.

:func:`replace_with_compressed` swaps one float constant for the pattern
that OpenVINO's CPU plugin fuses into its fully connected and gather
kernels::

    Constant(u4|i4|u8|i8) -> Convert(f16) [-> Subtract(Convert(zero point))]
        -> Multiply(scale f16) [-> Reshape to the original shape]
        [-> Convert(original float type)] -> MatMul | Gather

Also here: the Gather that reorders a MatMul's input channels (GPTQ
act-order checkpoints) and the low-rank adapter branch of LoRA correction,
both built from the same subgraph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino import op as ov_op

from ..config import CompressWeightsMode
from ..errors import ModelError
from ..quant.bitpack import pack_nibbles
from ..quant.lowering import CompressedWeight
from .sites import FLOAT_TYPES, LOOK_THROUGH, WeightSite, weight_of

# The element type of each mode's codes (and zero points) in the IR: a new format adds its entry here.
CODE_TYPES = {
    CompressWeightsMode.INT4_ASYM: ov.Type.u4,
    CompressWeightsMode.INT4_SYM: ov.Type.i4,
    CompressWeightsMode.INT8_ASYM: ov.Type.u8,
    CompressWeightsMode.INT8_SYM: ov.Type.i8,
}


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
    code_type = CODE_TYPES[cw.mode]
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


def gather_matmul_inputs(site: WeightSite, indices: np.ndarray) -> list[str]:
    """Feed every MatMul that uses ``site``'s constant as its weight with its activation's channels in ``indices`` order.

    Inserts ``Gather(activation, indices, axis=<activation's reduction axis>)``
    before each such MatMul, so that the weight may then hold its input
    channels in that same order: ``x W^T == x[..., P] (W[:, P])^T`` for any
    permutation ``P``.  Call it before :func:`replace_with_compressed` (it walks
    from the constant, through Convert nodes, to the MatMuls).  Returns the
    names of the Gather nodes.
    """
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
            if kind in LOOK_THROUGH:
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


def adapter_input(matmul) -> Any:
    """The activation input of a weighted MatMul that can take a LoRA adapter (first, untransposed input).

    Call it while the weight is still a float constant; raises ValueError otherwise.
    """
    found = weight_of(matmul)
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
