"""Quantization maths against a plain reference written here, group by group."""

from __future__ import annotations

import numpy as np
import pytest

from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.quant.bitpack import pack_nibbles
from optimum_wc.quant.lowering import dequantize, int8_error_sensitivity, quantize


def reference_quantize(w: np.ndarray, mode: M, group_size: int):
    """Row-by-row, group-by-group reference for a [out, in] weight (reduction over `in`)."""
    bits = 4 if "int4" in mode.value else 8
    asym = mode.value.endswith("asym")
    out_ch, in_ch = w.shape
    gs = in_ch if group_size == -1 else group_size
    codes = np.zeros_like(w, dtype=np.int32)
    scales, zps = [], []
    for r in range(out_ch):
        row_s, row_z = [], []
        for g in range(0, in_ch, gs):
            x = w[r, g : g + gs].astype(np.float32)
            if asym:
                lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
                s = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(2**bits - 1))
                s = max(s, np.finfo(np.float32).eps)
                z = int(np.clip(-np.round(np.float32(lo) / np.float32(s)), 0, 2**bits - 1))
                q = np.clip(np.round(x / np.float32(s) + np.float32(z)), 0, 2**bits - 1)
            else:
                mn, mx = float(x.min()), float(x.max())
                s = np.float32((abs(mn) if abs(mn) >= mx else -mx) / 2 ** (bits - 1))
                if abs(s) < np.finfo(np.float32).eps:
                    s = np.finfo(np.float32).eps
                z = None
                q = np.clip(np.round(x / np.float32(s)), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            codes[r, g : g + gs] = q
            row_s.append(s)
            row_z.append(z)
        scales.append(row_s)
        zps.append(row_z)
    return codes, np.array(scales, dtype=np.float32), (np.array(zps) if asym else None)


@pytest.mark.parametrize("mode, gs", [(M.INT8_ASYM, -1), (M.INT8_SYM, -1), (M.INT4_ASYM, 32), (M.INT4_SYM, 16), (M.INT4_ASYM, -1)])
def test_codes_and_scales_bit_exact(mode, gs):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((24, 64)) * rng.uniform(0.01, 2, size=(24, 1))).astype(np.float32)
    w[3, :] = np.abs(w[3, :])  # all positive row: asym min is clipped to 0
    w[5, :] = 0.0  # zero row: scale floors at eps
    cw = quantize(w, mode, gs, axis=1)
    ref_codes, ref_scales, ref_zps = reference_quantize(w, mode, gs)
    assert np.array_equal(cw.codes.reshape(w.shape).astype(np.int32), ref_codes)
    assert np.array_equal(cw.scale.reshape(ref_scales.shape), ref_scales)
    if ref_zps is None:
        assert cw.zero_point is None and cw.codes.dtype == np.int8
    else:
        assert np.array_equal(cw.zero_point.reshape(ref_zps.shape).astype(np.int64), ref_zps.astype(np.int64))
        assert cw.codes.dtype == np.uint8


def test_block_split_gives_the_same_result_as_one_block():
    """Large weights are split across threads; the result must not depend on it."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1024, 1024)).astype(np.float32)
    big = quantize(w, M.INT4_ASYM, 128, axis=1)
    parts = [quantize(w[i : i + 100], M.INT4_ASYM, 128, axis=1) for i in range(0, 1024, 100)]
    assert np.array_equal(big.codes, np.concatenate([p.codes for p in parts]))
    assert np.array_equal(big.scale, np.concatenate([p.scale for p in parts]))


def test_transposed_weight_reduces_along_axis_0():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 24)).astype(np.float32)  # [in, out] as in MatMul(transpose_b=False)
    cw = quantize(w, M.INT4_SYM, 32, axis=0)
    ref = quantize(np.ascontiguousarray(w.T), M.INT4_SYM, 32, axis=1)
    assert np.array_equal(dequantize(cw), dequantize(ref).T)


def test_dequantize_error_is_bounded_by_half_a_step():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    cw = quantize(w, M.INT4_ASYM, 32, axis=1)
    step = np.repeat(cw.scale.reshape(16, 4), 32, axis=1)
    assert np.all(np.abs(dequantize(cw) - w) <= step / 2 + 1e-6)
    sqnr = 10 * np.log10(np.sum(w**2) / np.sum((dequantize(cw) - w) ** 2))
    assert sqnr > 15  # 4-bit, group 32 on Gaussian weights
    assert cw.relative_error == pytest.approx(np.linalg.norm(dequantize(cw) - w) / np.linalg.norm(w), rel=1e-4)


def test_int8_sensitivity_is_inverse_of_worst_row_error():
    rng = np.random.default_rng(4)
    smooth = rng.standard_normal((8, 64)).astype(np.float32) * 0.01
    outlier = smooth.copy()
    outlier[2, 5] = 5.0  # one outlier makes its row's INT8 grid coarse
    assert int8_error_sensitivity(outlier, 1) < int8_error_sensitivity(smooth, 1)


@pytest.mark.parametrize("signed", [False, True])
def test_pack_nibbles_round_trip(signed):
    rng = np.random.default_rng(5)
    values = rng.integers(-8, 8, size=(7, 5)).astype(np.int8) if signed else rng.integers(0, 16, size=(7, 5)).astype(np.uint8)
    packed = pack_nibbles(values)
    assert packed.size == (values.size + 1) // 2
    lo, hi = packed & 0x0F, packed >> 4
    unpacked = np.stack([lo, hi], axis=1).reshape(-1)[: values.size].astype(np.int16)
    if signed:
        unpacked = np.where(unpacked > 7, unpacked - 16, unpacked)
    assert np.array_equal(unpacked.reshape(values.shape), values.astype(np.int16))


@pytest.mark.parametrize("mode, gs", [(M.INT4_ASYM, 32), (M.INT4_SYM, 16), (M.INT8_ASYM, -1), (M.INT8_SYM, -1)])
def test_quantize_dequantize_equals_the_stored_path(mode, gs):
    from optimum_wc.quant.lowering import quantize_dequantize

    w = np.random.default_rng(7).standard_normal((24, 64)).astype(np.float32)
    assert np.array_equal(quantize_dequantize(w, mode, gs, 1), dequantize(quantize(w, mode, gs, 1)))


@pytest.mark.parametrize("mode", [M.INT4_ASYM, M.INT4_SYM])
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_packed_quantize_equals_packing_the_codes(mode, group_size):
    """quantize(packed=True) packs each block's codes as it goes: same bytes, scales and errors as packing after."""
    from optimum_wc.quant.lowering import Bfloat16Bits

    rng = np.random.default_rng(7)
    w = (rng.standard_normal((1536, 768)) * 0.02).astype(np.float32)
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    for weight in (w, bits.view(Bfloat16Bits)):
        full, packed = quantize(weight, mode, group_size, 1), quantize(weight, mode, group_size, 1, packed=True)
        assert packed.codes is None and packed.packed_shape == full.codes.shape
        assert np.array_equal(packed.packed, pack_nibbles(full.codes))
        assert np.array_equal(packed.scale, full.scale) and (packed.sq_error, packed.sq_norm) == (full.sq_error, full.sq_norm)
        if mode.is_asym:
            assert np.array_equal(packed.zero_point, full.zero_point)
    # bfloat16 bits give the codes of the float32 weight they decode to
    decoded = (bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(quantize(bits.view(Bfloat16Bits), mode, group_size, 1).codes,
                          quantize(decoded, mode, group_size, 1).codes)
