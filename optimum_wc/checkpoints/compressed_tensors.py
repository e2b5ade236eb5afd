"""compressed-tensors (llm-compressor) integer layers -> their exact integer form (pure NumPy, never requantized).

Layouts, after compressed-tensors' compressors (``compressors/quantized_compressors/pack_quantized.py``
and ``naive_quantized.py``), for one linear ``W [out, in]`` with ``b`` bits, ``p = 32 / b``:

* ``pack-quantized``: ``weight_packed`` int32 ``[out, ceil(in / p)]``, packed
  along the input axis, value ``k`` of a word at bits ``[b k, b k + b)``,
  each the signed level plus ``2^(b-1)``; ``weight_zero_point`` (asymmetric
  group / channel only) int32 ``[ceil(out / p), G]`` packed the same way
  along the output axis; ``weight_shape`` int32 ``[2]``.
* ``naive-quantized`` (alias ``int-quantized``): ``weight`` int8 ``[out, in]``
  holding the signed levels; ``weight_zero_point`` int8 (asymmetric only).
* ``float-quantized``: ``weight`` float8_e4m3fn ``[out, in]``, symmetric,
  per channel or per tensor (kept as OpenVINO ``f8e4m3`` codes, which encode
  the same numbers: E4M3 "fn", NaN only at ``S.1111.111``).
* ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized`` (``compressors/nvfp4``,
  ``compressors/mxfp4``): ``weight_packed`` uint8 ``[out, in / 2]``, E2M1
  codes (bit 3 the sign; value 0..7 = 0, .5, 1, 1.5, 2, 3, 4, 6), element
  ``2 k`` in the low nibble of byte ``k``; NVFP4: ``weight_scale``
  float8_e4m3fn ``[out, in / 16]`` and ``weight_global_scale`` float32
  ``[1]``, ``W = q * (scale / global_scale)``; MXFP4: ``weight_scale`` uint8
  ``[out, in / 32]`` E8M0 exponents, ``W = q * 2^(e - 127)``.
* The others: ``weight_scale`` ``[out, G]`` (group), ``[out, 1]`` (channel) or
  ``[1]`` (tensor) in the model's float type; ``weight_g_idx`` int32 ``[in]``
  with ``actorder: "group"`` (the group of each input channel).

Dequantized weight: ``W[o, i] = scale[o, g(i)] * (q[o, i] - z[o, g(i)])``
(compressed-tensors' ``dequantize``), ``z = 0`` when symmetric.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..config import CompressWeightsMode
from ..errors import ExportError
from ..quant.lowering import CompressedWeight
from ..quant.minifloat import E4M3_VALUES
from .layers import LayerWeights, QuantizedLinear, as_f16_scales, build_weight, group_order
from .mxfp4 import e2m1_codes, mxfp4_weight
from .settings import LayerGroup, PrequantizedFormat

KINDS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape", "weight",
         "weight_global_scale", "input_global_scale")
INT_DTYPES = ("I32",)
SCALE_DTYPES = ("F16", "BF16", "F32")
# safetensors dtype -> the NumPy dtype the reader hands out (bfloat16 as float32, float8 as its bytes)
READ_AS = {"I32": "int32", "I64": "int64", "I8": "int8", "U8": "uint8", "F8_E4M3": "uint8", "F16": "float16",
           "BF16": "float32", "F32": "float32"}


def layer_tensors(tensors: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, dict[str, str]]:
    """Quantized layers by prefix, ``{kind: tensor name}``: a ``weight_packed``, or an int8 ``weight`` with a scale."""
    found: dict[str, dict[str, str]] = {}
    for name in tensors:
        prefix, _, kind = name.rpartition(".")
        if kind in KINDS and prefix:
            found.setdefault(prefix, {})[kind] = name
    quantized = {}
    for prefix, kinds in found.items():
        naive = "weight" in kinds and tensors[kinds["weight"]][1] in ("I8", "F8_E4M3") and "weight_scale" in kinds
        if "weight_packed" in kinds or naive:
            quantized[prefix] = kinds
    return quantized


def expected_tensors(group: LayerGroup, n_out: int, n_in: int) -> dict[str, tuple[tuple[int, ...], tuple[str, ...], str]]:
    """``{kind: (shape, dtypes, layout)}`` of one layer of ``group`` (``W [n_out, n_in]``); required kinds only."""
    if group.fp4:
        return _fp4_tensors(group, n_out, n_in)
    per = 32 // group.bits
    if group.group_size > 0:
        scale_shape, layout = (n_out, n_in // group.group_size), "[out, in / group_size]"
    elif group.group_size == -1:
        scale_shape, layout = (n_out, 1), "[out, 1]"
    else:
        scale_shape, layout = (1,), "[1]"
    out = {"weight_scale": (scale_shape, SCALE_DTYPES, layout)}
    packed = group.checkpoint_format == "pack-quantized"
    if packed:
        out["weight_packed"] = ((n_out, -(-n_in // per)), INT_DTYPES, "[out, ceil(in * bits / 32)]")
    else:
        out["weight"] = ((n_out, n_in), ("F8_E4M3",) if group.float_weights else ("I8",), "[out, in]")
    if not group.sym:
        if packed and group.group_size != 0:
            out["weight_zero_point"] = ((-(-n_out // per), scale_shape[1]), INT_DTYPES, "[ceil(out * bits / 32), groups]")
        else:
            out["weight_zero_point"] = (scale_shape, ("I8",), layout)
    return out


def check_layer(prefix: str, found: dict[str, str], fmt: PrequantizedFormat, tensors: dict,
                linear_shape: Callable[[str, str], tuple[int, int]]) -> QuantizedLinear:
    """A compressed-tensors layer: its config group, then every tensor's presence, dtype and shape."""
    marker = "weight_packed" if "weight_packed" in found else "weight"
    group = fmt.group_of(prefix)
    if group is None:
        raise ExportError(
            f"{prefix}.{marker} is quantized, but no config group of {fmt.source} targets {prefix}; "
            "the weights and the config disagree: use the config saved with these weights."
        )
    n_out, n_in = linear_shape(prefix, marker)
    if group.group_size > 0 and n_in % group.group_size:
        raise ExportError(
            f"{prefix}: {n_in} input channels are not a multiple of group_size={group.group_size}, which "
            "compressed-tensors requires; the checkpoint is corrupt or its config is wrong."
        )
    _check_kinds(prefix, group, n_out, n_in, {k: (name, tuple(tensors[name].shape), tensors[name].dtype)
                                              for k, name in found.items()})
    return QuantizedLinear(prefix, n_in, n_out, dict(found), group)


def _check_kinds(prefix: str, group: LayerGroup, n_out: int, n_in: int,
                 kinds: dict[str, tuple[str, tuple[int, ...], str]], read_as: dict[str, str] | None = None) -> None:
    """Every tensor the layer needs is there, every known one of its dtype and shape (``kinds``: ``{kind: (name,
    shape, dtype)}``, safetensors dtypes; ``read_as``: NumPy dtypes instead, mapped from safetensors' by it)."""
    expected = expected_tensors(group, n_out, n_in)
    optional = {"weight_g_idx": ((n_in,), ("I32", "I64"), "[in]"), "weight_shape": ((2,), ("I32", "I64"), "[2]")}
    for kind in expected:
        if kind not in kinds:
            raise ExportError(
                f"{prefix}.{kind} is missing from the checkpoint ({', '.join(sorted(n for n, _, _ in kinds.values()))} "
                f"are there): a {group.checkpoint_format} {'symmetric' if group.sym else 'asymmetric'} layer needs "
                f"{', '.join(expected)}. The checkpoint is incomplete: re-download or re-save it."
            )
    for kind, (name, got_shape, got_dtype) in kinds.items():
        shape, dtypes, layout = {**optional, **expected}.get(kind, (None, None, None))
        if shape is None:
            continue
        dtypes = tuple(dict.fromkeys(read_as[d] for d in dtypes)) if read_as else dtypes
        if got_dtype not in dtypes:
            raise ExportError(
                f"{name} is {got_dtype}, but a {group.checkpoint_format} {kind} must be {' or '.join(dtypes)}; "
                "re-save the checkpoint with compressed-tensors."
            )
        if got_shape != shape and not (kind == "weight_scale" and shape == (1,) and got_shape in ((), (1, 1))):
            raise ExportError(
                f"{name} has shape {list(got_shape)}, but config.json makes {prefix}.weight [{n_out}, {n_in}], so "
                f"a {group.bits}-bit {group.checkpoint_format} {kind} must be {list(shape)} ({layout}). The weights "
                "and the config disagree: use the config saved with these weights."
            )



def unpack_int32(packed: np.ndarray, bits: int, count: int, axis: int) -> np.ndarray:
    """Signed levels from compressed-tensors' int32 words: value ``k`` at bits ``[b k, b k + b)``, minus ``2^(b-1)``."""
    per, mask = 32 // bits, (1 << bits) - 1
    words = np.ascontiguousarray(np.moveaxis(packed, axis, -1)).view(np.uint32)
    values = np.stack([(words >> np.uint32(bits * k)) & np.uint32(mask) for k in range(per)], axis=-1)
    values = values.reshape(words.shape[:-1] + (-1,))[..., :count]
    return np.moveaxis(values.astype(np.int16) - (1 << (bits - 1)), -1, axis)


def convert_layer(prefix: str, group: LayerGroup, arrays: dict[str, np.ndarray], n_in: int, n_out: int) -> LayerWeights:
    """One compressed-tensors linear in exact integer form (``arrays``: its tensors by kind)."""
    bits, mid = group.bits, 1 << (group.bits - 1)
    # the reader checked the headers; the values handed in are checked again (this converter is public)
    _check_kinds(prefix, group, n_out, n_in, {k: (f"{prefix}.{k}", np.shape(a), np.asarray(a).dtype.name)
                                              for k, a in arrays.items()}, read_as=READ_AS)
    names = {"qzeros": f"{prefix}.weight_zero_point", "scales": f"{prefix}.weight_scale"}
    if group.fp4:
        return _fp4_layer(prefix, group, arrays, n_in, n_out)
    if group.float_weights:
        return _fp8_layer(prefix, arrays, n_in, n_out, names["scales"])
    if "weight_packed" in arrays:
        if "weight_shape" in arrays and [int(d) for d in np.asarray(arrays["weight_shape"]).reshape(-1)] != [n_out, n_in]:
            raise ExportError(
                f"{prefix}.weight_shape says {np.asarray(arrays['weight_shape']).tolist()}, but config.json makes "
                f"{prefix}.weight [{n_out}, {n_in}]; use the config saved with these weights."
            )
        levels = unpack_int32(arrays["weight_packed"], bits, n_in, axis=1)
    else:
        levels = arrays["weight"].astype(np.int16)
    low, high = -mid, mid - 1
    if levels.min(initial=0) < low or levels.max(initial=0) > high:
        raise ExportError(f"{prefix}: weight levels outside [{low}, {high}] for {bits} bits; the checkpoint is corrupt.")
    scale = np.asarray(arrays["weight_scale"])
    if group.group_size == 0:  # one scale for the tensor: per channel, repeated
        scale = np.broadcast_to(scale.reshape(1, 1), (n_out, 1))
    scales = as_f16_scales(np.ascontiguousarray(scale.T), names["scales"])  # [G, out]
    n_groups = scales.shape[0]
    if group.sym:
        zeros = np.zeros((n_groups, n_out), dtype=np.int32)
    else:
        zp = np.asarray(arrays["weight_zero_point"])
        if zp.dtype == np.int32 and group.checkpoint_format == "pack-quantized" and group.group_size != 0:
            zp = unpack_int32(zp, bits, n_out, axis=0)  # [out, G]
        zeros = np.broadcast_to(zp.reshape(-1, n_groups) if zp.size > 1 else zp.reshape(1, 1), (n_out, n_groups)).T
        zeros = zeros.astype(np.int32)
        if zeros.min(initial=0) < low or zeros.max(initial=0) > high:  # (a negative one would wrap in the IR's u8)
            raise ExportError(
                f"{names['qzeros']} holds zero points from {int(zeros.min())} to {int(zeros.max())}, outside "
                f"[{low}, {high}] for {bits} bits, where compressed-tensors clamps them; the checkpoint is corrupt: "
                "re-download or re-save it."
            )
    g_idx = arrays.get("weight_g_idx")
    if g_idx is not None and np.any(np.asarray(g_idx) < 0):  # "-1": not initialised, column order
        g_idx = None
    group_size = group.group_size if group.group_size > 0 else -1
    permutation = group_order(g_idx, f"{prefix}.weight_g_idx", n_in, n_groups, group_size)
    codes = (levels + mid).astype(np.uint8)  # [out, in], unsigned as the IR stores them
    cw, note = build_weight(codes, zeros + mid, scales, permutation, bits, group_size, group.sym, names)
    return LayerWeights(cw, permutation, note)


def _fp8_layer(prefix: str, arrays: dict[str, np.ndarray], n_in: int, n_out: int, scale_name: str) -> LayerWeights:
    """FP8 E4M3 bytes kept as they are, with one f16 scale per output channel (a tensor's scale repeated)."""
    codes = np.ascontiguousarray(arrays["weight"]).view(np.uint8).reshape(n_out, n_in)
    if np.any((codes & 0x7F) == 0x7F):
        raise ExportError(f"{prefix}.weight holds FP8 NaN codes; the checkpoint is corrupt: re-download it.")
    scale = np.asarray(arrays["weight_scale"]).reshape(-1)
    scale = np.broadcast_to(scale if scale.size == n_out else scale[:1], (n_out,)).reshape(n_out, 1)
    scale = as_f16_scales(np.ascontiguousarray(scale), scale_name).astype(np.float32)
    cw = CompressedWeight(codes, scale, None, CompressWeightsMode.FP8_E4M3, -1, (n_out, n_in))
    return LayerWeights(cw, None, "FP8 E4M3 weights kept as f8e4m3 constants (the CPU plugin does not fuse them)")


def _fp4_tensors(group: LayerGroup, n_out: int, n_in: int) -> dict:
    groups = n_in // group.group_size
    nvfp4 = group.checkpoint_format.startswith("nvfp4")
    out = {"weight_packed": ((n_out, n_in // 2), ("U8",), "[out, in / 2]"),
           "weight_scale": ((n_out, groups), ("F8_E4M3",) if nvfp4 else ("U8",), f"[out, in / {group.group_size}]")}
    if nvfp4:
        out["weight_global_scale"] = ((1,), ("F32",), "[1]")
    return out


def _fp4_layer(prefix: str, group: LayerGroup, arrays: dict[str, np.ndarray], n_in: int, n_out: int) -> LayerWeights:
    """E2M1 codes kept as f4e2m1, with the E4M3 scales and global scale (NVFP4) or E8M0 scales (MXFP4) as stored."""
    g = group.group_size
    codes = e2m1_codes(np.asarray(arrays["weight_packed"]).reshape(n_out, n_in // g, g // 2))
    stored = np.asarray(arrays["weight_scale"]).view(np.uint8).reshape(n_out, n_in // g, 1)
    if group.checkpoint_format.startswith("mxfp4"):
        cw = mxfp4_weight(codes, stored, f"{prefix}.weight_scale", (n_out, n_in))
        return LayerWeights(cw, None, "MXFP4 codes and E8M0 scales kept as f4e2m1 and f8e8m0 constants")
    if np.any((stored & 0x7F) == 0x7F):
        raise ExportError(f"{prefix}.weight_scale holds FP8 NaN codes; the checkpoint is corrupt: re-download it.")
    global_scale = np.asarray(arrays["weight_global_scale"], dtype=np.float32).reshape(-1)
    if global_scale.size != 1 or not np.isfinite(global_scale[0]) or global_scale[0] <= 0:
        raise ExportError(f"{prefix}.weight_global_scale is {global_scale.tolist()}, not one positive finite number; "
                          "the checkpoint is corrupt: re-download it.")
    # W = q * (s / global_scale): the IR multiplies the E4M3 scale by 1 / global_scale in float32 (one rounding)
    with np.errstate(over="ignore", divide="ignore"):
        second = np.full((1, 1, 1), np.float32(1.0) / global_scale[0], dtype=np.float32)
        largest = np.float32(np.abs(E4M3_VALUES[stored]).max(initial=0)) * second[0, 0, 0]
    if not largest <= np.finfo(np.float16).max:  # then into float16, as the decompression computes
        raise ExportError(f"{prefix}.weight_global_scale is {global_scale[0]}: the largest group scale over it, "
                          f"{largest}, is beyond float16's {np.finfo(np.float16).max:.0f}, in which the IR "
                          "decompresses the weights (they would be inf/NaN); the checkpoint is corrupt: re-download "
                          "it.")
    cw = CompressedWeight(codes, E4M3_VALUES[stored].astype(np.float32), None, CompressWeightsMode.NVFP4, g,
                          (n_out, n_in), global_scale=second)
    return LayerWeights(cw, None, "NVFP4 codes and E4M3 scales kept as f4e2m1 and f8e4m3 constants; the global "
                                  "scale as its float32 reciprocal")
