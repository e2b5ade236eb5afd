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
from ..errors import ConfigError, ModelError
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


def ir_bytes(values: np.ndarray, element_type) -> np.ndarray:
    """``values`` (uint8/int8 codes, or f16 scales) laid out as the IR stores ``element_type`` (u4/i4: two per byte)."""
    if element_type in (ov.Type.u4, ov.Type.i4):
        return pack_nibbles(values)
    return np.ascontiguousarray(values)


def _constant(data: np.ndarray, element_type, shape, name: str, shared: bool = False):
    const = ov_op.Constant(ov.Tensor(data, ov.Shape(list(shape)), element_type), shared_memory=shared)
    const.set_friendly_name(name)
    return const


def integer_constant(values: np.ndarray, element_type, name: str):
    """A Constant of ``element_type`` (u4/i4/u8/i8) holding ``values`` (uint8/int8)."""
    return _constant(ir_bytes(values, element_type), element_type, values.shape, name)


def constant_arrays(cw: CompressedWeight, name: str) -> dict[str, tuple[np.ndarray, Any, tuple[int, ...]]]:
    """The constants of ``cw``'s subgraph: ``{friendly name: (bytes as the IR stores them, element type, shape)}``."""
    code_type = CODE_TYPES[cw.mode]
    if cw.packed is not None:  # packed by quantize already
        arrays = {name: (cw.packed, code_type, cw.packed_shape)}
    else:
        arrays = {name: (ir_bytes(cw.codes, code_type), code_type, cw.codes.shape)}
    if cw.zero_point is not None:
        arrays[f"{name}/zero_point"] = (ir_bytes(cw.zero_point, code_type), code_type, cw.zero_point.shape)
    # (contiguous: the OpenVINO binding mistypes a strided float16 array as i16)
    arrays[f"{name}/scale"] = (np.ascontiguousarray(cw.scale, dtype=np.float16), ov.Type.f16, cw.scale.shape)
    return arrays


def placeholder_arrays(mode: CompressWeightsMode, codes_shape: tuple[int, ...], scale_shape: tuple[int, ...],
                       name: str, zeros: np.ndarray) -> dict[str, tuple[np.ndarray, Any, tuple[int, ...]]]:
    """Arrays of :func:`constant_arrays`' layout for a weight not yet compressed: views of the buffer ``zeros``."""
    code_type = CODE_TYPES[mode]
    per_byte = 2 if code_type in (ov.Type.u4, ov.Type.i4) else 1
    view = lambda shape, k: zeros[: (int(np.prod(shape)) * k + per_byte - 1) // per_byte]  # noqa: E731
    arrays = {name: (view(codes_shape, 1), code_type, codes_shape)}
    if mode.is_asym:
        arrays[f"{name}/zero_point"] = (view(scale_shape, 1), code_type, scale_shape)
    arrays[f"{name}/scale"] = (zeros[: 2 * int(np.prod(scale_shape))], ov.Type.f16, scale_shape)
    return arrays


def subgraph_from_arrays(arrays: dict, group_size: int, original_shape: tuple[int, ...], name: str,
                         shared: bool = False):
    """Build ``codes -> Convert -> [Subtract zp] -> Multiply scale -> [Reshape]`` (output f16) from ``arrays``.

    ``shared``: the constants use the arrays' memory instead of a copy.
    """
    codes = _constant(*arrays[name], name, shared)
    weight = ops.convert(codes, ov.Type.f16, name=f"{name}/convert")
    if f"{name}/zero_point" in arrays:
        zp_const = _constant(*arrays[f"{name}/zero_point"], f"{name}/zero_point", shared)
        zp = ops.convert(zp_const, ov.Type.f16, name=f"{name}/zero_point/convert")
        weight = ops.subtract(weight, zp, name=f"{name}/zero_point/subtract")
    scale = _constant(*arrays[f"{name}/scale"], f"{name}/scale", shared)
    weight = ops.multiply(weight, scale, name=f"{name}/fq_weights")
    if group_size != -1:
        shape = ops.constant(np.array(original_shape, dtype=np.int64), name=f"{name}/reshape/shape")
        weight = ops.reshape(weight, shape, special_zero=False, name=f"{name}/reshape")
    return weight


def place_placeholders(items: list[tuple]) -> tuple[dict[str, Any], np.ndarray]:
    """Swap each site's float constant for its decompression subgraph over *placeholder* constants.

    ``items``: ``(owner, site, mode, codes shape, scale shape, group size)``.
    The placeholders are views of one zero buffer, so the graph gets its final
    structure before any codes exist; whoever owns a constant writes its real
    bytes later.  Returns ``{constant name: owner}`` and the buffer (keep it
    alive while the graph is used or serialized).
    """
    largest = max((int(np.prod(c)) + 2 * int(np.prod(s)) for _, _, _, c, s, _ in items), default=0)
    zeros = np.zeros(largest + 1, dtype=np.uint8)
    owners: dict[str, Any] = {}
    for owner, site, mode, codes_shape, scale_shape, group_size in items:
        arrays = placeholder_arrays(mode, codes_shape, scale_shape, site.name, zeros)
        new = subgraph_from_arrays(arrays, group_size, site.shape, site.name, shared=True)
        replace_with_compressed(site, None, new)
        for name in arrays:
            if name in owners:
                raise ConfigError(f"two weights would both write a constant named {name!r}; rename one of them.")
            owners[name] = owner
    return owners, zeros


def decompression_subgraph(cw: CompressedWeight, name: str):
    """Build ``codes -> Convert -> [Subtract zp] -> Multiply scale -> [Reshape]`` (output f16)."""
    return subgraph_from_arrays(constant_arrays(cw, name), cw.group_size, cw.original_shape, name)


def replace_with_compressed(site: WeightSite, cw: CompressedWeight, new=None) -> None:
    """Swap ``site``'s float constant for its decompression subgraph, in place.

    Convert nodes that only cast the old constant to f16 are bypassed; a
    final Convert restores the consumers' float type (f32 or f16 IR alike).
    ``new``: the subgraph's output, when already built (e.g. of placeholders).
    """
    if new is None:
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
