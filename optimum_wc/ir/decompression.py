"""The decompression subgraph: how a compressed weight is written into the IR.

:func:`replace_with_compressed` swaps one float constant for the pattern
that OpenVINO's CPU plugin fuses into its fully connected and gather
kernels (the same nodes NNCF writes for each format)::

    Constant(u4|i4|u8|i8|u3|u2|nf4|f4e2m1|f8e4m3) -> Convert(f16)
        [-> Subtract(Convert(zero point))] -> Multiply(Convert(scale f16|f8e8m0|f8e4m3))
        [-> Reshape to the original shape] [-> Convert(original float type)] -> MatMul | Gather

a codebook format reads its values through ``Gather(table, indices)``
instead of the first Convert; the element types of each mode are in
:mod:`optimum_wc.quant.formats`.

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
from ..quant.bitpack import pack_bits, packed_size
from ..quant.formats import WeightFormat, format_of
from ..quant.lowering import CompressedWeight
from ..quant.minifloat import e4m3_codes, e8m0_codes, e8m0_exponent
from .sites import FLOAT_TYPES, LOOK_THROUGH, WeightSite, weight_of

def element_type(name: str):
    """The OpenVINO element type spelled ``name`` (``u4``, ``nf4``, ``f4e2m1``, ``f8e8m0``, ...)."""
    return getattr(ov.Type, name)


def ir_bytes(values: np.ndarray, element_type) -> np.ndarray:
    """``values`` (uint8/int8 codes, or f16 scales) laid out as the IR stores ``element_type`` (sub-byte types packed)."""
    bits = element_type.bitwidth
    if bits < 8:
        return pack_bits(np.ascontiguousarray(values), bits)
    return np.ascontiguousarray(values)


def pack_for_ir(cw: CompressedWeight) -> CompressedWeight:
    """Fill ``cw.packed`` with the IR's bytes of sub-byte codes (u4/u3/u2/nf4/f4e2m1, offset formats shifted).

    Meant for the worker thread that quantized ``cw``, so that the thread
    writing the graph only wraps ready bytes; ``codes`` are kept.  Byte and
    wider codes, and codes already packed, are left as they are.
    """
    fmt = cw.format
    if cw.packed is None and cw.codes is not None and fmt.code_bits < 8:
        cw.packed = pack_bits(np.ascontiguousarray(cw.codes), fmt.code_bits, fmt.offset)
        cw.packed_shape = tuple(cw.codes.shape)
    return cw


def _constant(data: np.ndarray, element_type, shape, name: str, shared: bool = False):
    const = ov_op.Constant(ov.Tensor(data, ov.Shape(list(shape)), element_type), shared_memory=shared)
    const.set_friendly_name(name)
    return const


def integer_constant(values: np.ndarray, element_type, name: str):
    """A Constant of ``element_type`` (u4/i4/u8/i8) holding ``values`` (uint8/int8)."""
    return _constant(ir_bytes(values, element_type), element_type, values.shape, name)


def scale_bytes(scale: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    """The float32 group scales as the format stores them: f16, E8M0 (powers of two) or E4M3 codes."""
    if fmt.scale_type == "f8e8m0":
        return e8m0_codes(e8m0_exponent(scale))
    if fmt.scale_type == "f8e4m3":
        return e4m3_codes(scale)
    # (contiguous: the OpenVINO binding mistypes a strided float16 array as i16)
    return np.ascontiguousarray(scale, dtype=np.float16)


def codebook_constant(fmt: WeightFormat, codebook: np.ndarray) -> tuple[np.ndarray, Any]:
    """The look-up table's bytes and element type: CB4's and adaptive ones in E4M3 (exact), a given codebook in float32."""
    if fmt.mode in (CompressWeightsMode.CB4, CompressWeightsMode.ADAPTIVE_CODEBOOK):
        return e4m3_codes(codebook), ov.Type.f8e4m3
    return np.ascontiguousarray(codebook, dtype=np.float32), ov.Type.f32


def _layout(fmt: WeightFormat, name: str, codes, codes_shape, zero_point, scale, scale_shape, global_scale,
            codebook) -> dict[str, tuple[np.ndarray, Any, tuple[int, ...]]]:
    """The constants of one weight's subgraph in creation order: ``{friendly name: (bytes, element type, shape)}``."""
    code_type = element_type(fmt.code_type)
    arrays = {}
    if fmt.codebook:
        table, table_type = codebook_constant(fmt, codebook)
        arrays[name] = (table, table_type, (len(codebook),))
        arrays[f"{name}_nncf_codebook_idxs"] = (codes, code_type, codes_shape)
    else:
        arrays[name] = (codes, code_type, codes_shape)
    if fmt.zero_point == "per_group":
        arrays[f"{name}/zero_point"] = (zero_point, code_type, scale_shape)
    elif fmt.zero_point == "offset":
        arrays[f"{name}/zero_point"] = (np.array(fmt.offset, dtype=np.int8), ov.Type.i8, ())
    arrays[f"{name}/scale"] = (scale, element_type(fmt.scale_type), scale_shape)
    if fmt.global_scale:
        arrays[f"{name}/second_order_scale"] = (global_scale, ov.Type.f32, (1,) * len(scale_shape))
    return arrays


def constant_arrays(cw: CompressedWeight, name: str) -> dict[str, tuple[np.ndarray, Any, tuple[int, ...]]]:
    """The constants of ``cw``'s subgraph: ``{friendly name: (bytes as the IR stores them, element type, shape)}``."""
    fmt = cw.format
    code_type = element_type(fmt.code_type)
    if cw.packed is not None:  # packed by quantize already
        codes, codes_shape = cw.packed, cw.packed_shape
    else:
        codes = cw.codes if not fmt.offset else (cw.codes.astype(np.int16) + fmt.offset).astype(np.uint8)
        codes, codes_shape = ir_bytes(codes, code_type), cw.codes.shape
    zero_point = None if cw.zero_point is None else ir_bytes(cw.zero_point, code_type)
    global_scale = None if cw.global_scale is None else np.ascontiguousarray(cw.global_scale, dtype=np.float32)
    return _layout(fmt, name, codes, codes_shape, zero_point, scale_bytes(cw.scale, fmt), cw.scale.shape,
                   global_scale, cw.codebook)


def placeholder_arrays(mode: CompressWeightsMode | WeightFormat, codes_shape: tuple[int, ...], scale_shape: tuple[int, ...],
                       name: str, zeros: np.ndarray, codebook: np.ndarray | None = None
                       ) -> dict[str, tuple[np.ndarray, Any, tuple[int, ...]]]:
    """Arrays of :func:`constant_arrays`' layout for a weight not yet compressed: views of the buffer ``zeros``.

    The look-up table and the scalar zero point do not depend on the weight: they are real already.
    """
    fmt = mode if isinstance(mode, WeightFormat) else format_of(mode, codebook)
    count = lambda shape: int(np.prod(shape))  # noqa: E731
    codes = zeros[: packed_size(count(codes_shape), fmt.code_bits)]
    zero_point = zeros[: packed_size(count(scale_shape), fmt.code_bits)]
    scale = zeros[: count(scale_shape) * element_type(fmt.scale_type).size]
    return _layout(fmt, name, codes, codes_shape, zero_point, scale, scale_shape, zeros[:4], codebook)


def subgraph_from_arrays(arrays: dict, group_size: int, original_shape: tuple[int, ...], name: str,
                         shared: bool = False):
    """Build the decompression subgraph (output f16) of ``arrays`` (:func:`constant_arrays`' layout).

    ``codes -> Convert(f16) [-> Subtract zero point] -> Multiply scale [-> Reshape]``;
    a codebook: ``Gather(table -> Convert(f16), indices [-> Convert(u8)]) -> Multiply scale``;
    NVFP4's scale: ``E4M3 -> Convert(f32) -> Multiply(second-order scale) -> Convert(f16)``.
    ``shared``: the constants use the arrays' memory instead of a copy.
    """
    # the look-up table and a scalar zero point do not come from the weight: always copied
    fixed = {key for key, (_, _, shape) in arrays.items() if shape == ()}
    if f"{name}_nncf_codebook_idxs" in arrays:
        fixed.add(name)
    const = lambda key: _constant(*arrays[key], key, shared and key not in fixed)  # noqa: E731
    f16 = lambda node, node_name: node if node.get_output_element_type(0) == ov.Type.f16 else ops.convert(  # noqa: E731
        node, ov.Type.f16, name=node_name)
    if f"{name}_nncf_codebook_idxs" in arrays:
        table = f16(const(name), f"{name}/convert")
        indices = const(f"{name}_nncf_codebook_idxs")
        if indices.get_output_element_type(0) == ov.Type.u4:
            indices = ops.convert(indices, ov.Type.u8, name=f"{name}_nncf_codebook_idxs/convert")
        axis = ops.constant(np.int64(0), name=f"{name}_nncf_codebook/axis")
        weight = ops.gather(table, indices, axis, name=f"{name}_nncf_codebook")
    else:
        weight = ops.convert(const(name), ov.Type.f16, name=f"{name}/convert")
    if f"{name}/zero_point" in arrays:
        zp = ops.convert(const(f"{name}/zero_point"), ov.Type.f16, name=f"{name}/zero_point/convert")
        weight = ops.subtract(weight, zp, name=f"{name}/zero_point/subtract")
    scale = const(f"{name}/scale")
    if f"{name}/second_order_scale" in arrays:
        scale = ops.multiply(ops.convert(scale, ov.Type.f32, name=f"{name}/scale/convert_f32"),
                             const(f"{name}/second_order_scale"), name=f"{name}/dequantized_scale")
    weight = ops.multiply(weight, f16(scale, f"{name}/scale/convert"), name=f"{name}/fq_weights")
    if group_size != -1:
        shape = ops.constant(np.array(original_shape, dtype=np.int64), name=f"{name}/reshape/shape")
        weight = ops.reshape(weight, shape, special_zero=False, name=f"{name}/reshape")
    return weight


def place_placeholders(items: list[tuple]) -> tuple[dict[str, Any], np.ndarray]:
    """Swap each site's float constant for its decompression subgraph over *placeholder* constants.

    ``items``: ``(owner, site, mode or format, codes shape, scale shape, group size[, codebook])``.
    The placeholders are views of one zero buffer, so the graph gets its final
    structure before any codes exist; whoever owns a constant writes its real
    bytes later.  Returns ``{constant name: owner}`` and the buffer (keep it
    alive while the graph is used or serialized).
    """
    largest = max((int(np.prod(item[3])) + 2 * int(np.prod(item[4])) for item in items), default=0)
    zeros = np.zeros(largest + 8, dtype=np.uint8)
    owners: dict[str, Any] = {}
    for owner, site, mode, codes_shape, scale_shape, group_size, *rest in items:
        arrays = placeholder_arrays(mode, codes_shape, scale_shape, site.name, zeros, rest[0] if rest else None)
        new = subgraph_from_arrays(arrays, group_size, site.shape, site.name, shared=True)
        replace_with_compressed(site, None, new)
        for name in arrays:
            if name in owners:
                raise ConfigError(f"two weights would both write a constant named {name!r}; rename one of them.")
            owners[name] = owner
    return owners, zeros


def decompression_subgraph(cw: CompressedWeight, name: str):
    """Build ``cw``'s decompression subgraph (output f16, see :func:`subgraph_from_arrays`)."""
    return subgraph_from_arrays(constant_arrays(cw, name), cw.group_size, cw.original_shape, name)


def replace_with_compressed(site: WeightSite, cw: CompressedWeight, new=None) -> None:
    """Swap ``site``'s float constant for its decompression subgraph, in place.

    Convert nodes that only cast the old constant to f16 are bypassed; a
    final Convert restores the consumers' float type (f32 or f16 IR alike).
    A ``ShapeOf`` of the weight becomes the constant shape: reading the
    decompressed weight, it kept OpenVINO's CPU plugin from running the
    MatMul on the compressed constant (OPT's tied embedding and lm_head:
    the lm_head's weight was decompressed to f32 when the model loaded).
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
            if consumer.get_type_name() == "ShapeOf":
                _replace_shape_of(consumer, site)
            elif consumer.get_type_name() == "Convert" and consumer.get_output_element_type(0) == ov.Type.f16:
                rewire(consumer)
            elif consumer.get_type_name() == "Convert" and consumer.get_output_element_type(0) in FLOAT_TYPES:
                target.replace_source_output(new.output(0))  # keep it: it is now the cast f16 -> float type
            else:
                target.replace_source_output(output_as(node.get_output_element_type(0)))

    rewire(site.const)
    site.const = None  # drop our reference: the float data is freed with the node


def _replace_shape_of(shape_of, site: WeightSite) -> None:
    """Give the users of ``shape_of`` (a ShapeOf of ``site``'s weight) the weight's static shape as a constant."""
    dtype = np.int32 if shape_of.get_output_element_type(0) == ov.Type.i32 else np.int64
    shape = ops.constant(np.array(site.shape, dtype=dtype), name=f"{site.name}/shape")
    for target in list(shape_of.output(0).get_target_inputs()):
        target.replace_source_output(shape.output(0))


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
