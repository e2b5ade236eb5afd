"""Integer weight quantization: the maths, as small pure NumPy functions.

For a weight ``W`` reduced along its input-channel axis (per output channel,
or per group of ``g`` input channels), in float32:

* symmetric (b bits):  ``s = signed_absmax(W) / 2^(b-1)``,
  ``q = clip(round(W / s), -2^(b-1), 2^(b-1) - 1)``, ``W ~ s * q``;
  ``signed_absmax`` is ``|min|`` if ``|min| >= max`` else ``-max`` (NNCF's rule,
  so the largest magnitude lands on the code -2^(b-1)).
* asymmetric:  ``lo = min(min W, 0)``, ``hi = max(max W, 0)``,
  ``s = (hi - lo) / (2^b - 1)``, ``z = clip(-round(lo / s), 0, 2^b - 1)``,
  ``q = clip(round(W / s + z), 0, 2^b - 1)``, ``W ~ s * (q - z)``.

Scales smaller than float32 eps are raised to eps.  These are NNCF's formulas,
so results are comparable code for code.  The scales are stored in f16 in the
IR; quantization itself uses the float32 scale, as NNCF does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ..config import CompressWeightsMode
from . import float_kernels, float_lowering, kernels, minifloat
from .bitpack import pack_nibbles
from .clipping import FULL, range_params
from .formats import format_of
from .rtn import asymmetric_params, levels, quantization_params, rounded_levels, symmetric_scale  # noqa: F401

_EPS = np.finfo(np.float32).eps
# Rows per block: big enough for NumPy's loops, small enough to stay in cache.
_BLOCK_ELEMENTS = 1 << 18
_POOL: ThreadPoolExecutor | None = None
_FUSED = os.environ.get("OPTIMUM_WC_FUSED_KERNEL", "1") != "0"


class Bfloat16Bits(np.ndarray):
    """A bfloat16 weight held as its uint16 bits (e.g. a view of a memory-mapped checkpoint).

    :func:`quantize` converts it to float32 block by block (:func:`as_float32`),
    so the whole weight never exists in float32.  Slices and reshapes keep the type.
    """


def as_float32(w: np.ndarray) -> np.ndarray:
    """``w`` in float32 (:class:`Bfloat16Bits` decoded, other float types converted, float32 as it is)."""
    if isinstance(w, Bfloat16Bits):  # one pass: the shift widens to uint32 inside the ufunc loop
        out = np.empty(w.shape, dtype=np.uint32)
        np.left_shift(np.asarray(w, dtype=np.uint16), 16, out=out, dtype=np.uint32)
        return out.view(np.float32)
    return np.asarray(w, dtype=np.float32)


@dataclass
class CompressedWeight:
    """Codes and decompression parameters of one weight.

    ``codes`` and ``scale`` (and ``zero_point``) are in *grouped* layout: for a
    weight reduced along axis ``a`` with group size ``g``, axis ``a`` of size
    ``n`` becomes ``(n // g, g)``; per-channel weights keep their shape and the
    reduced axis of ``scale`` has size 1.
    """

    codes: np.ndarray  # uint8 (asym, float formats, codebook indices) or int8 (sym integer levels)
    scale: np.ndarray  # float32, reduced axis of size 1 (NVFP4: the E4M3 group scale's value, without global_scale)
    zero_point: np.ndarray | None  # uint8, same shape as scale; None when symmetric
    mode: CompressWeightsMode
    group_size: int
    original_shape: tuple[int, ...]
    sq_error: float = 0.0  # sum of (W - dequantized)^2, measured while quantizing
    sq_norm: float = 0.0  # sum of W^2
    packed: np.ndarray | None = None  # sub-byte codes already in the IR's packed layout (``codes`` may be None)
    packed_shape: tuple[int, ...] = ()  # the shape of the codes that ``packed`` holds
    global_scale: np.ndarray | None = None  # NVFP4: the float32 scale of the group scales (keepdims)
    codebook: np.ndarray | None = None  # codebook modes: the float32 look-up table the codes index
    scale_type: str | None = None  # the scales' element type when not the mode's (pre-quantized codes kept exactly)

    @property
    def format(self):
        """The :class:`~optimum_wc.quant.formats.WeightFormat` of the codes."""
        fmt = format_of(self.mode, self.codebook)
        return fmt if self.scale_type is None else replace(fmt, scale_type=self.scale_type)

    @property
    def relative_error(self) -> float:
        """Relative Frobenius error ``||W - deq(Q(W))|| / ||W||``."""
        return float(np.sqrt(self.sq_error / self.sq_norm)) if self.sq_norm else 0.0


def grouped(weight: np.ndarray, axis: int, group_size: int) -> tuple[np.ndarray, int]:
    """View ``weight`` with ``axis`` split into ``(n // group_size, group_size)``.

    Returns the view and the axis to reduce over (the in-group axis).  With
    ``group_size == -1`` the weight is returned as it is.
    """
    axis = axis % weight.ndim
    if group_size == -1:
        return weight, axis
    n = weight.shape[axis]
    if n % group_size:
        raise ValueError(f"channel size {n} is not divisible by group size {group_size}")
    shape = weight.shape[:axis] + (n // group_size, group_size) + weight.shape[axis + 1 :]
    return weight.reshape(shape), axis + 1


def compressed_shapes(shape: tuple[int, ...], axis: int, group_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the codes and of the scale (and zero point) that :func:`quantize` gives for a weight of ``shape``."""
    axis = axis % len(shape)
    codes = tuple(shape)
    if group_size != -1:
        codes = codes[:axis] + (shape[axis] // group_size, group_size) + codes[axis + 1 :]
        axis += 1
    return codes, codes[:axis] + (1,) + codes[axis + 1 :]


def round_to_levels(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, mode: CompressWeightsMode,
                    codebook: np.ndarray | None = None) -> np.ndarray:
    """The grid values ``w`` rounds to at ``scale``, unscaled: integer levels (see :func:`rounded_levels`), or the
    value of the nearest float-format element / codebook entry of ``w / scale``; float32."""
    if mode.is_integer:
        return rounded_levels(w, scale, zero_point, mode)
    fmt = format_of(mode, codebook)
    w = np.asarray(w, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    per_row = scale.shape == w.shape[:-1] + (1,)  # one scale per last-axis run (else e.g. a GPTQ column: elementwise)
    if use_fused_kernel() and float_kernels.available() and fmt.code_type != "f8e4m3" and (
            per_row or scale.shape == w.shape) and np.isfinite(np.sum(scale)) and np.isfinite(np.sum(w)):
        rows = w.reshape(-1, w.shape[-1] if per_row else 1)
        code_type = "codebook" if fmt.codebook else fmt.code_type
        boundaries = minifloat.codebook_boundaries(codebook) if fmt.codebook else minifloat.NF4_BOUNDARIES
        codes, _, _ = float_kernels.encode_rows(rows, code_type, float_kernels.SCALE_GIVEN, 1.0, fmt.values(codebook),
                                                boundaries, scale=scale.reshape(-1))
        return fmt.values(codebook)[codes.reshape(w.shape)]
    return fmt.values(codebook)[fmt.encode(np.divide(w, scale, dtype=np.float32), codebook)]


def codes_of_levels(levels: np.ndarray, mode: CompressWeightsMode, codebook: np.ndarray | None = None) -> np.ndarray:
    """The codes of grid values from :func:`round_to_levels` (the data-aware formats' tables are sorted)."""
    if mode.is_integer:
        return np.asarray(levels).astype(np.uint8 if mode.is_asym else np.int8)
    values = format_of(mode, codebook).values(codebook)
    return np.searchsorted(values, np.asarray(levels, dtype=np.float32)).astype(np.uint8)


def level_values(cw: CompressedWeight) -> np.ndarray:
    """``cw``'s codes as unscaled grid values (float32): the integer levels, or the float elements / codebook entries."""
    if cw.mode.is_integer:
        return cw.codes.astype(np.float32)
    return cw.format.values(cw.codebook)[cw.codes]


def _quantize_block(w: np.ndarray, axis: int, mode: CompressWeightsMode, pack: bool = False,
                    codebook: np.ndarray | None = None, ranges: str | None = None):
    """Codes (packed two per byte with ``pack``), scale, zero point, the block's squared error and squared norm.

    The fused kernel (:mod:`.kernels`) gives the same bytes as the NumPy
    reference below when it can run; both sum the error with NumPy's ``dot``.
    Float formats and codebooks go to :mod:`.float_lowering`.  ``ranges``
    (integer modes): a rule of :func:`optimum_wc.quant.clipping.range_params`.
    """
    w = as_float32(w)
    if not mode.is_integer:
        return _float_block(w, axis, mode, pack, codebook)
    fused = _fused_block(w, axis, mode, pack) if use_fused_kernel() and not ranges else None
    if fused is not None:
        return fused
    if ranges:
        scale, zp = range_params(w, axis, mode, ranges, fused=use_fused_kernel())
    else:
        scale, zp = quantization_params(w, axis, mode)
    q = rounded_levels(w, scale, zp, mode)
    codes = q.astype(np.uint8 if mode.is_asym else np.int8)
    if zp is not None:
        q -= zp.astype(np.float32)
    q *= scale
    q -= w
    flat_err, flat_w = q.reshape(-1), w.reshape(-1)
    return (pack_nibbles(codes) if pack else codes), scale, zp, float(np.dot(flat_err, flat_err)), \
        float(np.dot(flat_w, flat_w))


def _float_block(w: np.ndarray, axis: int, mode: CompressWeightsMode, pack: bool, codebook: np.ndarray | None):
    """:func:`_quantize_block` for float formats and codebooks (NVFP4: the error is measured after the second level)."""
    fmt = format_of(mode, codebook)
    flat_w = w.reshape(-1)
    sq_norm = float(np.dot(flat_w, flat_w))
    fused = _fused_float_block(w, axis, fmt, codebook) if use_fused_kernel() and np.isfinite(sq_norm) else None
    if fused is not None:
        codes, scale, err = fused
    else:
        codes, scale = float_lowering.encode_block(w, axis, fmt, codebook)
        err = (float_lowering.decode(codes, scale, fmt, codebook) - w).reshape(-1)
    sq_error = 0.0 if fmt.global_scale else float(np.dot(err, err))
    return (pack_nibbles(codes) if pack else codes), scale, None, sq_error, sq_norm


def _fused_float_block(w: np.ndarray, axis: int, fmt, codebook: np.ndarray | None):
    """Codes, scale and flat error of a finite block by :mod:`.float_kernels`; None where it does not apply."""
    if axis != w.ndim - 1 or not float_kernels.available():
        return None
    if fmt.codebook:
        rule, top = (float_kernels.SCALE_SIGNED, np.max(codebook)) if fmt.signed_scale else (
            float_kernels.SCALE_CODEBOOK, np.max(np.abs(codebook)))
        boundaries = minifloat.codebook_boundaries(codebook)
    else:
        rule = float_kernels.SCALE_MX if fmt.scale_type == "f8e8m0" else float_kernels.SCALE_PLAIN
        top, boundaries = fmt.max_value, minifloat.NF4_BOUNDARIES
    rows = np.ascontiguousarray(w).reshape(-1, w.shape[-1])
    code_type = "codebook" if fmt.codebook else fmt.code_type
    codes, scale, err = float_kernels.encode_rows(rows, code_type, rule, top, fmt.values(codebook), boundaries)
    return codes.reshape(w.shape), scale.reshape(w.shape[:-1] + (1,)), err


def use_fused_kernel(enabled: bool | None = None) -> bool:
    """Whether round to nearest uses the fused kernel; ``enabled`` sets it (False: the NumPy reference only)."""
    global _FUSED
    if enabled is not None:
        _FUSED = bool(enabled)
    return _FUSED and kernels.available()  # (the float kernels need numba too, as these)


def _fused_block(w: np.ndarray, axis: int, mode: CompressWeightsMode, pack: bool):
    """:func:`_quantize_block` by the fused kernel; None where it does not apply (then use the reference)."""
    if axis != w.ndim - 1 or mode.num_bits not in (2, 3, 4, 8) or (pack and mode.num_bits != 4):
        return None
    rows = np.ascontiguousarray(w).reshape(-1, w.shape[-1])  # one row per group (per channel: per row)
    flat_w = rows.reshape(-1)
    sq_norm = float(np.dot(flat_w, flat_w))
    if not np.isfinite(sq_norm):  # NaN or inf (or an overflowing norm): NumPy's semantics decide
        return None
    codes, scale, zp, err = kernels.quantize_rows(rows, mode.num_bits, mode.is_asym, pack)
    param_shape = w.shape[:-1] + (1,)
    return (codes if pack else codes.reshape(w.shape)), scale.reshape(param_shape), \
        (None if zp is None else zp.reshape(param_shape)), float(np.dot(err, err)), sq_norm


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="optimum-wc")
    return _POOL


def quantize(weight: np.ndarray, mode: CompressWeightsMode, group_size: int, axis: int, *,
             packed: bool = False, codebook: np.ndarray | None = None, ranges: str | None = None) -> CompressedWeight:
    """Quantize ``weight`` along its input-channel ``axis`` (per channel if ``group_size == -1``).

    The work is split into blocks along the first non-reduced axis and run on
    a small thread pool (NumPy releases the GIL); every block uses exactly the
    element-wise formulas above, so the result does not depend on the split.
    ``weight`` may be float16 or :class:`Bfloat16Bits`: each block is converted
    to float32 on its own.  With ``packed`` (4-bit modes, several blocks) each
    block's codes are packed two per byte as soon as they are made: the result
    has ``packed`` bytes instead of ``codes``, and the unpacked codes never
    exist whole.  ``codebook``: the sorted float32 table of a codebook mode.
    ``ranges``: 2-4 bit integer modes take each group's range by that rule
    of :mod:`.clipping` (``"mse"``: the weight-error-minimising clipped range;
    ``"full"``: asymmetric modes only, the smallest step covering the range)
    instead of round to nearest's; other modes ignore it (INT8 backup layers
    round as they are).
    """
    applies = mode.is_integer and mode.num_bits <= 4 and (ranges != FULL or mode.is_asym)
    ranges = ranges if applies else None
    if codebook is not None:
        codebook = np.asarray(codebook, dtype=np.float32)
    fmt = format_of(mode, codebook)
    packed = packed and fmt.code_bits == 4 and not fmt.global_scale
    w, red = grouped(weight, axis, group_size)
    split_axis = 0 if red != 0 else 1
    if w.ndim < 2:
        split_axis = None
    blocks = [w]
    if split_axis is not None and w.size > 2 * _BLOCK_ELEMENTS:
        n = w.shape[split_axis]
        rows = max(1, _BLOCK_ELEMENTS * n // w.size)
        lead = (slice(None),) * split_axis
        blocks = [w[lead + (slice(i, i + rows),)] for i in range(0, n, rows)]
    if len(blocks) == 1:
        codes, scale, zp, sq_error, sq_norm = _quantize_block(blocks[0], red, mode, codebook=codebook, ranges=ranges)
    else:  # each block's results go straight into the outputs: no concatenated copy of the codes
        param_shape = w.shape[:red] + (1,) + w.shape[red + 1 :]
        pack = packed and split_axis == 0 and all(b.size % 2 == 0 for b in blocks)
        codes = None if pack else np.empty(w.shape, dtype=np.int8 if mode.is_integer and not mode.is_asym else np.uint8)
        packed_out = np.empty(w.size // 2, dtype=np.uint8) if pack else None
        per_row = w.size // w.shape[0]
        scale = np.empty(param_shape, dtype=np.float32)
        zp = np.empty(param_shape, dtype=np.uint8) if mode.is_asym else None
        lead = (slice(None),) * split_axis
        rows = blocks[0].shape[split_axis]

        def run(i: int) -> tuple[float, float]:
            at = lead + (slice(i * rows, i * rows + blocks[i].shape[split_axis]),)
            block_codes, scale[at], block_zp, err, norm = _quantize_block(blocks[i], red, mode, pack, codebook, ranges)
            if pack:  # rows are the leading axis: block i is one contiguous run of the flattened codes
                first = i * rows * per_row // 2
                packed_out[first : first + block_codes.size] = block_codes
            else:
                codes[at] = block_codes
            if zp is not None:
                zp[at] = block_zp
            return err, norm

        sums = list(_pool().map(run, range(len(blocks))))
        sq_error, sq_norm = sum(e for e, _ in sums), sum(n for _, n in sums)
        if pack:
            return CompressedWeight(None, scale, zp, mode, group_size, tuple(weight.shape), sq_error, sq_norm,
                                    packed=packed_out, packed_shape=tuple(w.shape), codebook=codebook)
    cw = CompressedWeight(codes, scale, zp, mode, group_size, tuple(weight.shape), sq_error, sq_norm,
                          codebook=codebook)
    if fmt.global_scale:
        _second_level(cw, w)
    return cw


def _second_level(cw: CompressedWeight, w: np.ndarray) -> None:
    """NVFP4: store the group scales in E4M3 under one float32 scale, then measure the error (block by block)."""
    _, cw.scale, cw.global_scale = float_lowering.second_level(cw.scale)
    fmt, err = cw.format, 0.0
    step = max(1, _BLOCK_ELEMENTS * w.shape[0] // max(1, w.size)) if cw.scale.shape[0] == w.shape[0] else w.shape[0]
    for i in range(0, w.shape[0], step):
        diff = float_lowering.decode(cw.codes[i : i + step], cw.scale[i : i + step], fmt, None, cw.global_scale)
        diff -= as_float32(w[i : i + step])
        err += float(np.dot(diff.reshape(-1), diff.reshape(-1)))
    cw.sq_error = err


def quantize_dequantize(weight: np.ndarray, mode: CompressWeightsMode, group_size: int, axis: int,
                        codebook: np.ndarray | None = None) -> np.ndarray:
    """``deq(Q(weight))`` in float32 with the formulas of :func:`quantize`, without keeping codes (for searches)."""
    if not mode.is_integer:
        return dequantize(quantize(np.asarray(weight, dtype=np.float32), mode, group_size, axis, codebook=codebook))
    w, red = grouped(np.asarray(weight, dtype=np.float32), axis, group_size)
    scale, zp = quantization_params(w, red, mode)
    q = rounded_levels(w, scale, zp, mode)
    if zp is not None:
        q -= zp.astype(np.float32)
    q *= scale
    return q.reshape(np.shape(weight))


def dequantize(cw: CompressedWeight) -> np.ndarray:
    """``scale * (codes - zero_point)`` (float formats: ``scale * values[codes]``) in float32, in the original shape."""
    if not cw.mode.is_integer:
        return float_lowering.decode(cw.codes, cw.scale, cw.format, cw.codebook, cw.global_scale).reshape(cw.original_shape)
    q = cw.codes.astype(np.float32)
    if cw.zero_point is not None:
        q -= cw.zero_point.astype(np.float32)
    return (q * cw.scale).reshape(cw.original_shape)


def int8_error_sensitivity(weight: np.ndarray, axis: int) -> float:
    """Data-free sensitivity: ``1 / (max over rows of mean((W - deq(q8(W)))^2) + eps)``.

    High values mean INT8 per-channel keeps the weight well; the mixed-precision
    assignment gives the 4-bit mode to the lowest values first (NNCF's
    WEIGHT_QUANTIZATION_ERROR criterion).
    """
    w = np.asarray(weight, dtype=np.float32)
    cw = quantize(w, CompressWeightsMode.INT8_ASYM, -1, axis)
    err = np.square(dequantize(cw) - w, dtype=np.float32)
    return float(1.0 / (np.max(np.mean(err, axis=axis % w.ndim)) + _EPS))
