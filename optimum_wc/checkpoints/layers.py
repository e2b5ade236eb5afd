"""One packed linear layer -> its exact integer form in our layout (pure NumPy, never requantized).

Layouts (one linear layer ``y = x W^T``, ``W`` of shape ``[out, in]``, ``b``
bits, ``p = 32 / b`` values per int32, ``G`` groups; unpacking in
:mod:`optimum_wc.quant.bitpack`):

* GPTQ ``qweight`` int32 ``[in / p, out]`` packed along the *input* axis;
  ``qzeros`` int32 ``[G, out / p]`` along the *output* axis (checkpoint format
  ``"gptq"``, v1, stores ``zero_point - 1`` masked to ``b`` bits; ``"gptq_v2"``
  the zero point itself); ``scales`` float16 ``[G, out]``; ``g_idx`` int32
  ``[in]``, the group of each input channel (not contiguous with ``desc_act``).
* AWQ (GEMM) ``qweight`` int32 ``[in, out / 8]`` and ``qzeros`` int32
  ``[G, out / 8]`` packed along the *output* axis in AWQ's nibble order; zero
  points without offset; ``scales`` float16 ``[G, out]``; groups contiguous.
* AWQ GEMV (AutoAWQ's ``WQLinear_GEMV``): ``qweight`` int32 ``[out, in / 8]``
  packed along the *input* axis, natural nibble order; ``qzeros`` int32
  ``[out, Z]`` and ``scales`` float16 ``[out, 8 Z]`` with ``Z`` = the group
  count rounded up (``calculate_zeros_width``), the first ``G`` valid.

Dequantized weight: ``W[o, i] = scales[g(i), o] * (q[i, o] - z[g(i), o])``.
When the groups are not contiguous along the input axis (GPTQ ``desc_act``),
the input channels are reordered so that each group is contiguous (the
export then reorders the activation to match, ``x W^T == x[..., P] (W[:, P])^T``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..config import CompressWeightsMode
from ..errors import ExportError
from ..quant.bitpack import unpack_along_columns, unpack_along_rows, unpack_awq
from ..quant.lowering import CompressedWeight, dequantize
from ..quant.marlin import marlin_shape_problem, unpack_marlin
from .settings import LayerGroup, PrequantizedFormat

QUANT_TENSORS = ("qweight", "qzeros", "scales", "g_idx")


@dataclass
class QuantizedLinear:
    """One quantized linear layer of the checkpoint: ``<prefix>.qweight`` etc., weight ``[out, in]``."""

    prefix: str  # e.g. model.layers.0.self_attn.q_proj
    in_features: int
    out_features: int
    tensors: dict[str, str]  # kind ("qweight", ...) -> tensor name present in the checkpoint
    group: LayerGroup | None = None  # compressed-tensors: the config group that quantized it
    fmt: PrequantizedFormat | None = None  # GPTQ/AWQ: the layer's settings (after per-layer overrides)
    state: dict = field(default_factory=dict)  # bitsandbytes: the layer's quant state (blocksize, nesting, ...)
    param: str = ""  # the model parameter when it is not ``<prefix>.weight`` (MoE experts)
    experts: int = 0  # MoE experts: the weight is [experts, out, in] in the IR ([experts, in, out] in the model)

    @property
    def weight_name(self) -> str:
        return self.param or f"{self.prefix}.weight"

    @property
    def ir_shape(self) -> tuple[int, ...]:
        """The weight's shape in the IR: ``[out, in]``, or ``[experts, out, in]``."""
        return ((self.experts,) if self.experts else ()) + (self.out_features, self.in_features)


@dataclass
class LayerWeights:
    """The exact integer form of one quantized linear layer.

    ``compressed`` is in our grouped layout (``codes [out, G, g]``, ``scale``
    and ``zero_point`` ``[out, G, 1]``; per channel ``[out, in]`` / ``[out, 1]``)
    over the input channels taken in ``permutation`` order (None: natural
    order), i.e. it represents ``W[:, permutation]``.
    """

    compressed: CompressedWeight
    permutation: np.ndarray | None
    note: str = ""

    def dequantized(self) -> np.ndarray:
        """``W`` as float32 ``[out, in]``, in the checkpoint's input-channel order."""
        w = dequantize(self.compressed)
        if self.permutation is None:
            return w
        out = np.empty_like(w)
        out[:, self.permutation] = w
        return out


def refuse_non_finite(scales: np.ndarray, name: str) -> None:
    """Refuse a NaN/inf scale, naming the tensor and the first bad value (it would make weights inf/NaN)."""
    if not np.isfinite(scales).all():
        bad = int(np.flatnonzero(~np.isfinite(scales.reshape(-1)))[0])
        raise ExportError(f"{name} holds a non-finite scale ({scales.reshape(-1)[bad]} at flat index {bad}), which "
                          "would make the layer's weights inf/NaN. The checkpoint is corrupt: re-download or "
                          "re-quantize it.")


def as_f16_scales(scales: np.ndarray, name: str) -> np.ndarray:
    """Scales in float16, as the IR stores them: refused when non-finite, or when float16 changes one."""
    refuse_non_finite(scales, name)
    if scales.dtype == np.float16:
        return scales
    with np.errstate(over="ignore"):  # a value beyond float16 becomes inf here, and is refused below
        as_f16 = scales.astype(np.float16)
    if not np.array_equal(as_f16.astype(np.float32), scales.astype(np.float32)):
        raise ExportError(
            f"{name} holds {scales.dtype} values that float16 cannot represent exactly; the IR stores scales in "
            "float16, so these weights cannot be kept exactly. Re-save the checkpoint with float16 scales."
        )
    return as_f16


def _group_sizes(in_features: int, n_groups: int, group_size: int) -> np.ndarray:
    """Channels per group: ``group_size`` each, the last one holding the rest (GPTQ's ceil(in / g) groups)."""
    if group_size == -1:
        return np.array([in_features], dtype=np.int64)
    sizes = np.full(n_groups, group_size, dtype=np.int64)
    sizes[-1] = in_features - group_size * (n_groups - 1)
    return sizes


def group_order(
    g_idx: np.ndarray | None, name: str, in_features: int, n_groups: int, group_size: int
) -> np.ndarray | None:
    """The input-channel permutation that makes groups contiguous, or None if they already are."""
    natural = np.arange(in_features, dtype=np.int64) // (in_features if group_size == -1 else group_size)
    if g_idx is None:
        return None
    g = g_idx.astype(np.int64).reshape(-1)
    bad = np.flatnonzero((g < 0) | (g >= n_groups))
    if bad.size:
        i = int(bad[0])
        raise ExportError(
            f"{name} maps input channel {i} to group {int(g[i])}, outside [0, {n_groups}) "
            f"({bad.size} channel(s) out of range; the layer has {n_groups} group(s) of scales). The checkpoint is "
            "corrupt or its group_size is wrong: re-save it, or fix group_size in the quantization config."
        )
    if np.array_equal(g, natural):
        return None
    counts = np.bincount(g, minlength=n_groups)
    sizes = _group_sizes(in_features, n_groups, group_size)
    if not np.array_equal(counts, sizes):
        k = int(np.flatnonzero(counts != sizes)[0])
        raise ExportError(
            f"{name} puts {int(counts[k])} input channels in group {k}, but that group must hold {int(sizes[k])} "
            f"(group_size={group_size}, the last group the rest of {in_features}) to be stored exactly; the "
            "checkpoint's g_idx is not a GPTQ act-order grouping. Re-quantize the model, or export it from float."
        )
    return np.argsort(g, kind="stable")


def split_ragged_groups(zeros: np.ndarray, scales: np.ndarray, in_features: int, group_size: int
                        ) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Groups of a layer whose ``in_features`` ``group_size`` does not divide, as equal sub-groups.

    GPTQ tools give such a layer ceil(in / g) groups, the last one partial.
    Every group splits into sub-groups of ``d = gcd(in, g)`` channels (``d``
    divides ``g`` and the partial group's ``in mod g``) that repeat their
    group's zero point and scale: the same dequantized weight, in equal groups.
    Returns ``(zeros, scales, d, note)`` with one row per sub-group.
    """
    if group_size == -1 or in_features % group_size == 0:
        return zeros, scales, group_size, ""
    d = math.gcd(in_features, group_size)
    owner = (np.arange(in_features // d) * d) // group_size
    note = (f"{in_features} input channels are not a multiple of group_size={group_size}: its {zeros.shape[0]} "
            f"groups (the last of {in_features % group_size}) are kept as {in_features // d} sub-groups of {d} "
            "channels repeating their group's scale and zero point")
    return zeros[owner], scales[owner], d, note


def build_weight(
    codes: np.ndarray,
    zeros: np.ndarray,
    scales: np.ndarray,
    permutation: np.ndarray | None,
    bits: int,
    group_size: int,
    sym: bool,
    names: dict[str, str],
) -> tuple[CompressedWeight, str]:
    """Codes ``[out, in]`` (uint8), real zero points ``[G, out]`` (int), scales ``[G, out]`` -> CompressedWeight."""
    n_out, n_in = codes.shape
    zeros, scales, group_size, note = split_ragged_groups(zeros, scales, n_in, group_size)
    n_groups = zeros.shape[0]
    codes = np.ascontiguousarray(codes if permutation is None else codes[:, permutation], dtype=np.uint8)
    scale = np.ascontiguousarray(scales.T.astype(np.float32))  # [out, G]
    zp = np.ascontiguousarray(zeros.T)  # [out, G]
    if group_size != -1:
        codes = codes.reshape(n_out, n_groups, n_in // n_groups)
        scale, zp = scale[:, :, None], zp[:, :, None]
    container = 4 if bits <= 4 else 8  # 2- and 3-bit codes go into u4/i4, the narrowest pattern the CPU plugin fuses
    if bits < container:
        note = "; ".join(filter(None, [note, f"{bits}-bit codes kept exactly in {container}-bit constants (the CPU "
                                              "plugin fuses u4/i4; it has no fused u2/u3 pattern with per-group zero "
                                              "points)"]))
    high = 2**container - 1
    mid = 2 ** (bits - 1)
    if sym and np.all(zp == mid):
        signed = (codes - np.uint8(mid)).view(np.int8)  # c - mid, two's complement (uint8 arithmetic wraps)
        mode = CompressWeightsMode.INT4_SYM if container == 4 else CompressWeightsMode.INT8_SYM
        return CompressedWeight(signed, scale, None, mode, group_size, (n_out, n_in)), note
    if sym:
        note = "; ".join(filter(None, [note, f"sym=true but {names['qzeros']} holds zero points other than {mid}: "
                                              "kept with its zero points"]))
    if int(zp.max(initial=0)) > high:
        if container == 8:
            raise ExportError(
                f"{names['qzeros']} gives a zero point of {int(zp.max())}, above 255 "
                "(a stored 255 in GPTQ v1 means 256), "
                "which no 8-bit zero point can hold. The checkpoint was written with an overflowing zero point: "
                "re-quantize it, or save it as checkpoint_format='gptq_v2'."
            )
        note = "; ".join(filter(None, [note, f"{names['qzeros']} gives zero point {int(zp.max())} (a stored 15 in "
                                              "GPTQ v1 means 16), above 15: the layer is kept exactly with 8-bit codes"]))
        mode = CompressWeightsMode.INT8_ASYM
        cw = CompressedWeight(codes, scale, zp.astype(np.uint8), mode, group_size, (n_out, n_in))
        return cw, note
    mode = CompressWeightsMode.INT4_ASYM if container == 4 else CompressWeightsMode.INT8_ASYM
    return CompressedWeight(codes, scale, zp.astype(np.uint8), mode, group_size, (n_out, n_in)), note


def group_count(in_features: int, group_size: int) -> int:
    """Groups of scales of a layer: ceil(in / g), the last one partial when g does not divide ``in_features``."""
    if group_size == -1:
        return 1
    return -(-in_features // group_size)


def gemv_zeros_width(n_groups: int, group_size: int) -> int:
    """AutoAWQ's ``calculate_zeros_width``: int32 words of GEMV zero points per row (groups / 8, padded)."""
    multiplier = 1 if group_size >= 128 or group_size == -1 else {64: 2, 32: 4}.get(group_size)
    if multiplier is None:
        raise ExportError(f"an AWQ GEMV checkpoint with group_size={group_size}: AutoAWQ's GEMV layout is defined for "
                          "group sizes 32, 64 and >= 128 only. Fix group_size in the config, or re-save as GEMM.")
    words = -(-n_groups // 8)
    return -(-words // multiplier) * multiplier


def packed_shapes(fmt: PrequantizedFormat, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
    """The shape of each packed tensor of one GPTQ or AWQ (GEMM, GEMV) linear layer (see the module's layouts)."""
    n_in, n_out, bits = in_features, out_features, fmt.bits
    n_groups = group_count(n_in, fmt.group_size)
    if fmt.method == "gptq":
        return {"qweight": (n_in * bits // 32, n_out), "qzeros": (n_groups, n_out * bits // 32),
                "scales": (n_groups, n_out), "g_idx": (n_in,)}
    if fmt.checkpoint_format == "awq_gemv":
        width = gemv_zeros_width(n_groups, fmt.group_size)
        return {"qweight": (n_out, n_in // 8), "qzeros": (n_out, width), "scales": (n_out, 8 * width)}
    return {"qweight": (n_in, n_out // 8), "qzeros": (n_groups, n_out // 8), "scales": (n_groups, n_out)}


PACKED_DTYPES = {"qweight": ("int32", "uint32"), "qzeros": ("int32", "uint32"),
                 "scales": ("float16", "float32"), "g_idx": ("int32", "int64")}


def check_packed(prefix: str, tensors: dict[str, np.ndarray | None], shapes: dict[str, tuple[int, ...]],
                 names: dict[str, str] | None = None) -> None:
    """Refuse a packed tensor of the wrong dtype or shape, or non-finite scales, naming it (before any unpacking;
    ``names``: the tensors' names when they are not ``<prefix>.<kind>``)."""
    for kind, array in tensors.items():
        if array is None:
            continue
        name = (names or {}).get(kind, f"{prefix}.{kind}")
        if not isinstance(array, np.ndarray) or array.dtype.name not in PACKED_DTYPES[kind]:
            what = array.dtype.name if isinstance(array, np.ndarray) else type(array).__name__
            raise ExportError(f"{name} is {what}, but a packed {kind} must be {' or '.join(PACKED_DTYPES[kind])}; "
                              "the checkpoint is corrupt or uses a packing optimum-wc does not read: re-save it.")
        if array.shape != shapes[kind]:
            raise ExportError(f"{name} has shape {list(array.shape)}, but the layer's settings make it "
                              f"{list(shapes[kind])}; the weights and the config disagree: use the config saved "
                              "with these weights.")
        if kind == "scales":
            refuse_non_finite(array, name)


def convert_gptq_layer(
    prefix: str,
    fmt: PrequantizedFormat,
    qweight: np.ndarray,
    qzeros: np.ndarray,
    scales: np.ndarray,
    g_idx: np.ndarray | None,
    in_features: int,
    out_features: int,
) -> LayerWeights:
    """One GPTQ linear (tensors ``<prefix>.qweight/qzeros/scales/g_idx``) in exact integer form."""
    check_packed(prefix, {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx},
                 packed_shapes(fmt, in_features, out_features))
    names = {t: f"{prefix}.{t}" for t in QUANT_TENSORS}
    n_groups = group_count(in_features, fmt.group_size)
    if fmt.bits == 3:  # a bit stream along the input axis
        codes = np.ascontiguousarray(unpack_along_rows(qweight, 3).T)
    else:  # the packed words transposed (8x less data than the codes): then input values run along each row
        codes = unpack_along_columns(np.ascontiguousarray(qweight.T), fmt.bits)  # [out, in]
    if fmt.zero_point_offset and fmt.producer == "gptqmodel" and fmt.bits != 3:
        # GPTQModel writes v1 by subtracting 0x11..1 from the whole word (a zero point of 0 borrows from the next
        # field) and reads it back by adding it: undo exactly that
        ones = np.uint32(sum(1 << (fmt.bits * k) for k in range(32 // fmt.bits)))
        words = np.ascontiguousarray(qzeros).view(np.uint32) + ones  # modulo 2^32, as GPTQModel's int32 add
        zeros = unpack_along_columns(words.view(np.int32), fmt.bits).astype(np.int32)
    else:  # v1: real zero point = stored value + 1, as AutoGPTQ's kernels compute it (may reach 2^bits)
        zeros = unpack_along_columns(qzeros, fmt.bits).astype(np.int32) + fmt.zero_point_offset  # [G, out]
    permutation = group_order(g_idx, names["g_idx"], in_features, n_groups, fmt.group_size)
    cw, note = build_weight(codes, zeros, as_f16_scales(scales, names["scales"]), permutation,
                             fmt.bits, fmt.group_size, fmt.sym, names)
    return LayerWeights(cw, permutation, note)


def convert_awq_layer(
    prefix: str,
    fmt: PrequantizedFormat,
    qweight: np.ndarray,
    qzeros: np.ndarray,
    scales: np.ndarray,
    in_features: int,
    out_features: int,
) -> LayerWeights:
    """One AWQ GEMM linear (tensors ``<prefix>.qweight/qzeros/scales``) in exact integer form."""
    check_packed(prefix, {"qweight": qweight, "qzeros": qzeros, "scales": scales},
                 packed_shapes(fmt, in_features, out_features))
    names = {t: f"{prefix}.{t}" for t in QUANT_TENSORS}
    n_groups = group_count(in_features, fmt.group_size)
    if fmt.checkpoint_format == "awq_gemv":  # [out, in / 8] natural nibble order; zeros and scales padded
        codes = unpack_along_columns(qweight, 4)  # [out, in]
        zeros = np.ascontiguousarray(unpack_along_columns(qzeros, 4)[:, :n_groups].T).astype(np.int32)
        scales = np.ascontiguousarray(scales[:, :n_groups].T)
    else:
        codes = np.ascontiguousarray(unpack_awq(qweight).T)  # [out, in]
        zeros = unpack_awq(qzeros).astype(np.int32)  # [G, out]
    scales = as_f16_scales(scales, names["scales"])
    cw, note = build_weight(codes, zeros, scales, None, 4, fmt.group_size, fmt.sym, names)
    return LayerWeights(cw, None, note)


def convert_marlin_layer(prefix: str, fmt: PrequantizedFormat, packed: np.ndarray, scales: np.ndarray
                         ) -> LayerWeights:
    """One Marlin linear (GPTQ ``B`` / ``s``, AWQ ``qweight`` / ``scales``): symmetric 4-bit codes in natural order."""
    gptq = fmt.checkpoint_format == "marlin"  # AutoGPTQ's names
    names = {"qweight": f"{prefix}.{'B' if gptq else 'qweight'}", "qzeros": f"{prefix} (Marlin, symmetric)",
             "scales": f"{prefix}.{'s' if gptq else 'scales'}"}
    # the layer's shape is the packed tensor's ([in / 16, 2 out]): checked before the tiles are undone
    rows, width = packed.shape if isinstance(packed, np.ndarray) and packed.ndim == 2 else (0, 0)
    problem = marlin_shape_problem(16 * rows, width // 2, group_count(16 * rows, fmt.group_size))
    if problem:
        what = f"has shape {list(packed.shape)}" if isinstance(packed, np.ndarray) else f"is {type(packed).__name__}"
        raise ExportError(f"{names['qweight']} {what}: {problem}; the checkpoint is corrupt or does not match its "
                          "config.json.")
    check_packed(prefix, {"qweight": packed, "scales": scales},
                 {"qweight": (rows, width // 2 * 2), "scales": (group_count(16 * rows, fmt.group_size), width // 2)},
                 names)
    codes, natural = unpack_marlin(packed, scales)
    zeros = np.full(natural.shape, 8, dtype=np.int32)
    cw, note = build_weight(codes, zeros, as_f16_scales(natural, names["scales"]), None, 4, fmt.group_size, True, names)
    return LayerWeights(cw, None, "; ".join(filter(None, [note, "Marlin tiles unpacked into natural order"])))
