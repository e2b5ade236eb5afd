"""The float and codebook formats: element encodings, group quantization, bit packing, against references.

The references here are written independently of the package: element
encodings by brute force over each format's grid (nearest value, the stated
tie rule), checked themselves against OpenVINO's own ``Convert``; group
quantization from the formulas in ``optimum_wc.quant.float_lowering``'s
docstring, written out directly.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from openvino import op as ov_op

from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.quant import minifloat as mf
from optimum_wc.quant.bitpack import pack_bits, packed_size
from optimum_wc.quant.formats import CB4_CODEBOOK, FORMATS, format_of
from optimum_wc.quant.lowering import dequantize, quantize

EPS = np.finfo(np.float32).eps
E2M1_GRID = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)


def e4m3_grid() -> np.ndarray:
    """The 127 finite non-negative E4M3 magnitudes, by code (0..126), from the format's definition."""
    out = []
    for code in range(127):
        e, m = code >> 3, code & 7
        out.append(m / 8 * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return np.array(out)


def nearest_code(a: np.ndarray, grid: np.ndarray, tie: str) -> np.ndarray:
    """Brute force: index of the grid value nearest to each ``a`` (>= 0); ``tie``: 'even' code or 'low' index."""
    shape, a = np.shape(a), np.reshape(a, -1)
    return _nearest(a, grid, tie).reshape(shape)


def _nearest(a: np.ndarray, grid: np.ndarray, tie: str) -> np.ndarray:
    d = np.abs(a[:, None] - grid[None, :])
    best = d.min(axis=1, keepdims=True)
    hits = d == best
    if tie == "low":
        return hits.argmax(axis=1)
    even = hits & (np.arange(grid.size) % 2 == 0)[None, :]
    return np.where(even.any(axis=1), even.argmax(axis=1), hits.argmax(axis=1))


def ref_e2m1(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    mag = np.where(np.isnan(x), 6.0, np.minimum(np.abs(x), 6.0))
    return (nearest_code(mag, E2M1_GRID, "even") | (np.signbit(x) & ~np.isnan(x)) * 8).astype(np.uint8)


def ref_e4m3(x: np.ndarray) -> np.ndarray:
    half = x.astype(np.float16).astype(np.float64)
    mag = np.abs(half)
    nan = ~np.isfinite(mag) | (mag > 464)  # up to 464 rounds to 448 (a tie at 464 goes to the even code)
    code = nearest_code(np.where(nan, 0, np.minimum(mag, 448)), e4m3_grid(), "even")
    code = np.where(nan, 0x7F, code)
    return (code | np.signbit(half) * 0x80).astype(np.uint8)


def ref_nf4(x: np.ndarray) -> np.ndarray:
    return nearest_code(x.astype(np.float64), mf.NF4_VALUES.astype(np.float64), "low").astype(np.uint8)


def ov_convert_codes(x: np.ndarray, element_type) -> np.ndarray:
    """The codes OpenVINO's CPU Convert gives (unpacked to one per byte)."""
    p = ops.parameter([x.size], ov.Type.f32)
    compiled = ov.Core().compile_model(ov.Model([ops.convert(p, element_type)], [p]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer([x])
    raw = np.array(request.get_output_tensor(0).data, copy=True).view(np.uint8).reshape(-1)
    if element_type.bitwidth == 4:
        raw = np.stack([raw & 15, raw >> 4], axis=1).reshape(-1)[: x.size]
    return raw


def probe_values(limit: float) -> np.ndarray:
    """Every finite bfloat16 and float16 value within +-limit, plus random float32 values and ties."""
    b16 = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
    f16 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    rnd = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * limit / 3
    x = np.concatenate([b16, f16, rnd])
    return x[np.isfinite(x) & (np.abs(x) <= limit)]


@pytest.mark.parametrize("encoder, reference, element_type, limit", [
    (mf.e2m1_codes, ref_e2m1, ov.Type.f4e2m1, 20.0),
    (mf.e4m3_codes, ref_e4m3, ov.Type.f8e4m3, 1000.0),
    (mf.nf4_codes, ref_nf4, ov.Type.nf4, 1.5),
])
def test_element_encoders_match_reference_and_openvino(encoder, reference, element_type, limit):
    x = probe_values(limit)
    ours = encoder(x)
    assert np.array_equal(ours, reference(x))
    assert np.array_equal(ours, ov_convert_codes(x, element_type))


def test_nf4_ties_and_boundaries_take_the_lower_level():
    b = mf.NF4_BOUNDARIES
    assert np.array_equal(mf.nf4_codes(b), np.arange(15))
    above = np.nextafter(b, np.float32(2))
    assert np.array_equal(mf.nf4_codes(above), np.arange(1, 16))
    assert np.array_equal(mf.nf4_codes(above), ov_convert_codes(above, ov.Type.nf4))


def test_encoding_round_trips_saturation_subnormals_and_no_nan():
    e2m1 = mf.E2M1_VALUES
    assert np.array_equal(mf.e2m1_codes(e2m1), np.arange(16))  # -0 keeps its own code
    finite = np.arange(256)[np.isfinite(mf.E4M3_VALUES)]
    assert finite.size == 254 and np.array_equal(mf.e4m3_codes(mf.E4M3_VALUES[finite]), finite)
    assert mf.E4M3_VALUES[1] == 2.0**-9 and mf.E4M3_VALUES[7] == 7 * 2.0**-9  # subnormals
    assert mf.E4M3_VALUES[mf.e4m3_codes(np.float32([2.0**-10, 1.5 * 2.0**-9]))].tolist() == [0.0, 2.0**-8]  # ties to even
    assert mf.E2M1_VALUES[mf.e2m1_codes(np.float32([7, 1e9, -100]))].tolist() == [6, 6, -6]  # saturates
    assert mf.E4M3_VALUES[mf.e4m3_codes(np.float32([449, 464]))].tolist() == [448, 448]
    assert np.isnan(mf.E4M3_VALUES[mf.e4m3_codes(np.float32([465, 1e6]))]).all()  # beyond: NaN, as OpenVINO
    x = np.random.default_rng(1).uniform(-448, 448, 100000).astype(np.float32)
    assert not np.isnan(mf.E4M3_VALUES[mf.e4m3_codes(x)]).any()
    assert not np.isnan(mf.E2M1_VALUES[mf.e2m1_codes(x)]).any()


def test_e8m0_exponent_is_the_smallest_power_of_two_not_below():
    k = np.arange(-140, 128)
    exact = np.ldexp(np.float32(1), k).astype(np.float32)
    assert np.array_equal(mf.e8m0_exponent(exact), np.clip(k, -127, 127))
    above = np.nextafter(exact, np.float32(np.inf))
    assert np.array_equal(mf.e8m0_exponent(above[(k > -127) & (k < 127)]), k[(k > -127) & (k < 127)] + 1)
    s = np.random.default_rng(2).uniform(1e-6, 1e3, 10000).astype(np.float32)
    e = mf.e8m0_exponent(s)
    assert np.all(np.ldexp(1.0, e) >= s) and np.all(np.ldexp(1.0, e - 1) < s)
    assert np.array_equal(mf.e8m0_codes(np.array([-127, 0, 127])), [0, 127, 254])


@pytest.mark.parametrize("bits, element_type", [(2, ov.Type.u2), (3, ov.Type.u3), (4, ov.Type.u4), (8, ov.Type.u8)])
@pytest.mark.parametrize("count", [1, 5, 8, 13, 64, 1001])
def test_packing_matches_openvino_constants(bits, element_type, count):
    values = np.random.default_rng(count).integers(0, 2**bits, count).astype(np.uint8)
    const = ov_op.Constant(element_type, ov.Shape([count]), values.tolist())
    expected = np.frombuffer(const.data.tobytes(), np.uint8)
    assert packed_size(count, bits) == expected.size
    assert np.array_equal(pack_bits(values, bits), expected)


# -- group quantization against the formulas, written out ------------------------------------------------

def ref_float_quantize(w: np.ndarray, mode: M, group_size: int, codebook=None):
    """Codes, scales (float32) and decoded values of ``w [out, in]`` reduced along axis 1, from the formulas."""
    out_ch, in_ch = w.shape
    gs = in_ch if group_size == -1 else group_size
    g = w.reshape(out_ch, in_ch // gs, gs).astype(np.float32)
    absmax = np.abs(g).max(axis=2, keepdims=True)
    if mode.is_codebook:
        s = (absmax / np.abs(codebook).max()).astype(np.float32)
        s = np.where(s < EPS, EPS, s).astype(np.float32)
        codes = nearest_code((g / s).reshape(-1).astype(np.float64), codebook.astype(np.float64), "low")
        return codes.reshape(g.shape).astype(np.uint8), s, codebook[codes].reshape(g.shape) * s
    top = {M.NF4: 1.0, M.FP8_E4M3: 448.0, M.MXFP8_E4M3: 448.0}.get(mode, 6.0)
    s = (np.where(absmax < EPS, EPS, absmax) / np.float32(top)).astype(np.float32)
    if mode in (M.MXFP4, M.MXFP8_E4M3):
        s = np.float32(2.0) ** np.ceil(np.log2(s.astype(np.float64))).astype(np.float32)
    x = (g / s).astype(np.float32).reshape(-1)
    encode, values = {M.NF4: (ref_nf4, mf.NF4_VALUES), M.FP8_E4M3: (ref_e4m3, mf.E4M3_VALUES),
                      M.MXFP8_E4M3: (ref_e4m3, mf.E4M3_VALUES)}.get(mode, (ref_e2m1, mf.E2M1_VALUES))
    codes = encode(x).reshape(g.shape)
    if mode is M.NVFP4:
        t = np.float32(max(float(s.max()), EPS) / 448)
        s = mf.E4M3_VALUES[ref_e4m3((s / t).astype(np.float32))] * t
    return codes, s, values[codes] * s


@pytest.mark.parametrize("mode, group_size", [
    (M.NF4, 128), (M.NF4, 32), (M.NF4, -1), (M.FP4, 64), (M.FP8_E4M3, 128), (M.MXFP4, 32), (M.MXFP8_E4M3, 32),
    (M.NVFP4, 16), (M.CB4, -1), (M.CB4, 64), (M.CODEBOOK, 32),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_quantize_matches_formulas(mode, group_size, dtype):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((48, 256)) * rng.uniform(0.001, 0.2, (48, 1))).astype(dtype)
    w[5, :128] = 0  # an all-zero group: the eps floor
    w[7, 3] = 9.0  # an outlier
    codebook = np.float32([-2, -1.2, -0.7, -0.3, 0, 0.25, 0.6, 1.1, 1.7, 2.5]) if mode is M.CODEBOOK else (
        CB4_CODEBOOK if mode is M.CB4 else None)
    cw = quantize(w, mode, group_size, axis=1, codebook=codebook)
    codes, scale, deq = ref_float_quantize(w.astype(np.float32), mode, group_size, codebook)
    gs = 256 if group_size == -1 else group_size
    assert np.array_equal(cw.codes.reshape(codes.shape), codes)
    if mode is M.NVFP4:  # the stored scale is the E4M3 value; its float32 product with the global scale is `scale`
        assert np.array_equal(cw.scale.reshape(scale.shape) * cw.global_scale.reshape(()), scale)
    else:
        assert np.array_equal(cw.scale.reshape(scale.shape), scale)
    np.testing.assert_allclose(dequantize(cw).reshape(48, 256 // gs, gs), deq, rtol=1e-6, atol=0)
    err = np.sum((deq.reshape(48, 256) - w.astype(np.float32)) ** 2)
    assert cw.sq_error == pytest.approx(float(err), rel=1e-4)


@pytest.mark.parametrize("mode, bits", [(M.INT3_SYM, 3), (M.INT2_SYM, 2)])
def test_int3_int2_are_symmetric_levels(mode, bits):
    w = np.random.default_rng(4).standard_normal((16, 128)).astype(np.float32)
    cw = quantize(w, mode, 32, axis=1)
    g = w.reshape(16, 4, 32)
    lo, hi = g.min(axis=2, keepdims=True), g.max(axis=2, keepdims=True)
    s = (np.where(np.abs(lo) >= hi, np.abs(lo), -hi) / 2 ** (bits - 1)).astype(np.float32)
    q = np.clip(np.rint(g / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert np.array_equal(cw.codes, q.astype(np.int8)) and np.array_equal(cw.scale, s)
    assert FORMATS[mode].offset == 2 ** (bits - 1) and format_of(mode).code_type == f"u{bits}"


def test_codebook_of_more_than_16_entries_takes_8_bit_indices():
    fmt = format_of(M.CODEBOOK, 40)
    assert fmt.code_type == "u8" and fmt.code_bits == 8
    table = np.linspace(-1, 1, 40).astype(np.float32)
    cw = quantize(np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32), M.CODEBOOK, -1, 1, codebook=table)
    assert cw.codes.max() < 40 and cw.format.code_type == "u8"


# -- adaptive codebook ---------------------------------------------------------------------------------------

def test_adaptive_codebook_fits_the_weights_better_than_cb4():
    from optimum_wc.quant.codebook_estimation import fit_codebook, histogram, loss, normalized_groups

    w = np.random.default_rng(6).laplace(size=(64, 256)).astype(np.float32)  # heavier tails than CB4's shape
    table = fit_codebook(w, 64)
    assert table.shape == (16,) and np.all(np.diff(table) > 0)
    assert np.array_equal(mf.E4M3_VALUES[mf.e4m3_codes(table)], table)  # stored exactly as E4M3
    assert 0.0 in table and table[-1] == np.abs(table).max()  # the top entry takes each group's extreme
    centres, mass = histogram(*normalized_groups(w, 64))
    assert loss(table, centres, mass) < 0.97 * loss(CB4_CODEBOOK, centres, mass)  # measured: 0.956
    err = lambda cb: float(np.sum((dequantize(quantize(w, M.ADAPTIVE_CODEBOOK, 64, 1, codebook=cb)) - w) ** 2))  # noqa: E731
    assert err(table) < err(CB4_CODEBOOK)
    assert np.array_equal(fit_codebook(w, 64), table)  # deterministic


def test_adaptive_codebook_weighs_important_channels():
    from optimum_wc.quant.codebook_estimation import fit_codebook

    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    w[:, :16] = rng.uniform(-1, 1, (64, 16)) * np.abs(w).max(axis=1, keepdims=True)  # a uniform-shaped block
    importance = np.ones(128)
    importance[:16] = 1000.0
    plain, weighted = fit_codebook(w, -1), fit_codebook(w, -1, importance)
    err = lambda cb: float(np.sum((dequantize(quantize(w, M.ADAPTIVE_CODEBOOK, -1, 1, codebook=cb))[:, :16] - w[:, :16]) ** 2))  # noqa: E731
    assert err(weighted) < err(plain)


# -- the fused kernel against the reference encoders ---------------------------------------------------------

@pytest.mark.parametrize("code_type, top, encode", [
    ("f8e4m3", 448.0, mf.e4m3_codes), ("f4e2m1", 6.0, mf.e2m1_codes), ("nf4", 1.0, mf.nf4_codes),
    ("codebook", 3.5, lambda x: mf.codebook_codes(x, CB4_CODEBOOK)),
])
def test_fused_kernel_encodes_every_value_as_the_reference(code_type, top, encode):
    """Rows holding +top (so the scale is exactly 1) and every float16 / bfloat16 value within range, plus ties."""
    from optimum_wc.quant import float_kernels

    if not float_kernels.available():
        pytest.skip("numba is not installed")
    x = probe_values(top)
    x = np.concatenate([x, -x, np.float32([0.0, -0.0]), mf.NF4_BOUNDARIES, np.nextafter(mf.NF4_BOUNDARIES, 2)])
    x = x[np.abs(x) <= top]
    g = 255
    x = np.concatenate([x, np.zeros(-x.size % g, np.float32)]).reshape(-1, g)
    rows = np.concatenate([np.full((x.shape[0], 1), top, np.float32), x], axis=1)
    if code_type == "codebook":
        values, boundaries, rule = CB4_CODEBOOK, mf.codebook_boundaries(CB4_CODEBOOK), float_kernels.SCALE_CODEBOOK
    else:
        values = {"f8e4m3": mf.E4M3_VALUES, "f4e2m1": mf.E2M1_VALUES, "nf4": mf.NF4_VALUES}[code_type]
        boundaries, rule = mf.NF4_BOUNDARIES, float_kernels.SCALE_PLAIN
    codes, scale, err = float_kernels.encode_rows(rows, code_type, rule, top, values, boundaries)
    assert np.all(scale == 1.0)
    assert np.array_equal(codes, encode(rows))
    assert np.array_equal(err, (values[codes] * scale[:, None] - rows).reshape(-1))


@pytest.mark.parametrize("mode, group_size", [
    (M.NF4, 128), (M.FP4, 32), (M.FP8_E4M3, 64), (M.MXFP4, 32), (M.MXFP8_E4M3, 32), (M.NVFP4, 16), (M.CB4, -1),
    (M.CODEBOOK, 32), (M.ADAPTIVE_CODEBOOK, -1), (M.ADAPTIVE_CODEBOOK, 32), (M.INT3_SYM, 32), (M.INT2_SYM, -1),
])
def test_fused_and_reference_paths_give_the_same_bytes(mode, group_size):
    from optimum_wc.quant import float_kernels, lowering

    if not float_kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((600, 512)) * rng.uniform(1e-4, 0.3, (600, 1))).astype(np.float32)  # several blocks
    w[3, :64] = 0.0
    w[4, 5] = -0.0
    codebook = np.float32([-1, -0.4, -0.1, 0, 0.15, 0.5, 1.2]) if mode in (M.CODEBOOK, M.ADAPTIVE_CODEBOOK) else (
        CB4_CODEBOOK if mode is M.CB4 else None)
    fused = quantize(w, mode, group_size, 1, codebook=codebook)
    try:
        lowering.use_fused_kernel(False)
        ref = quantize(w, mode, group_size, 1, codebook=codebook)
    finally:
        lowering.use_fused_kernel(True)
    assert np.array_equal(fused.codes, ref.codes) and np.array_equal(fused.scale, ref.scale)
    assert fused.sq_error == ref.sq_error and fused.sq_norm == ref.sq_norm


@pytest.mark.parametrize("bits", [2, 3])
def test_sub_byte_packing_kernel_equals_the_numpy_packer(bits):
    from optimum_wc.quant import bitpack

    if bitpack._numba_packer() is None:
        pytest.skip("numba is not installed")
    values = np.random.default_rng(bits).integers(0, 2**bits, 100003).astype(np.uint8)
    reference = bitpack.pack_u3(values) if bits == 3 else bitpack.pack_crumbs(values)
    assert np.array_equal(pack_bits(values, bits), reference)


@pytest.mark.parametrize("mode", [M.NF4, M.CB4, M.CODEBOOK, M.FP4])
@pytest.mark.parametrize("elementwise", [False, True])
def test_rounding_at_a_given_scale_fused_equals_reference(mode, elementwise):
    """What scale estimation and GPTQ call: the grid values at the caller's scales (per group, or per element)."""
    from optimum_wc.quant import lowering

    rng = np.random.default_rng(9)
    codebook = np.float32([-2, -1, -0.3, 0, 0.4, 1, 2.5]) if mode is M.CODEBOOK else (CB4_CODEBOOK if mode is M.CB4 else None)
    w = rng.standard_normal((6, 40, 32)).astype(np.float32)
    scale = rng.uniform(0.05, 2, (6, 40, 32) if elementwise else (6, 40, 1)).astype(np.float32)
    fused = lowering.round_to_levels(w, scale, None, mode, codebook)
    try:
        lowering.use_fused_kernel(False)
        ref = lowering.round_to_levels(w, scale, None, mode, codebook)
    finally:
        lowering.use_fused_kernel(True)
    assert np.array_equal(fused, ref)


def test_adaptive_codebook_with_rows_keeps_the_table_with_the_least_output_error():
    from optimum_wc.quant.codebook_estimation import choose_codebook, fit_codebook, output_error

    rng = np.random.default_rng(10)
    w = rng.laplace(size=(48, 128)).astype(np.float32)
    x = rng.standard_normal((200, 128)).astype(np.float32)
    x[:, :8] *= 30.0  # a few loud channels, as in real LLM activations
    importance = np.mean(x.astype(np.float64) ** 2, axis=0)
    chosen = choose_codebook(w, 32, importance, CB4_CODEBOOK, x)
    candidates = [fit_codebook(w, 32, importance, CB4_CODEBOOK), fit_codebook(w, 32, None, CB4_CODEBOOK), CB4_CODEBOOK]
    errors = [output_error(w, 32, c, x) for c in candidates]
    assert output_error(w, 32, chosen, x) == min(errors)
    assert np.array_equal(choose_codebook(w, 32, importance, CB4_CODEBOOK), candidates[0])  # no rows: the fit


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("count", [1, 7, 8, 9, 100003])
def test_packing_signed_levels_with_their_offset_equals_packing_the_shifted_codes(bits, count):
    """int3/int2 store ``level + 2^(b-1)``: the fused add-and-pack equals shifting first, for any tail length."""
    from optimum_wc.quant import bitpack

    half = 2 ** (bits - 1)
    levels = np.random.default_rng(count).integers(-half, half, count).astype(np.int8)
    shifted = (levels.astype(np.int16) + half).astype(np.uint8)
    reference = bitpack.pack_u3(shifted) if bits == 3 else bitpack.pack_crumbs(shifted)
    assert np.array_equal(pack_bits(levels, bits, half), reference)
    assert np.array_equal(pack_bits(shifted, bits), reference)


@pytest.mark.parametrize("mode", [M.INT3_SYM, M.INT2_SYM, M.INT4_SYM, M.NF4])
def test_codes_packed_on_the_worker_equal_the_ir_bytes(mode):
    """``pack_for_ir`` gives the bytes the IR writer would pack itself, and keeps the codes."""
    from optimum_wc.ir.decompression import constant_arrays, pack_for_ir

    w = np.random.default_rng(5).normal(size=(24, 64)).astype(np.float32)
    cw = quantize(w, mode, 32, 1)
    expected = constant_arrays(cw, "w")["w"]
    pack_for_ir(cw)
    assert cw.packed is not None and cw.codes is not None
    got = constant_arrays(cw, "w")["w"]
    assert np.array_equal(got[0], expected[0]) and got[1:] == expected[1:]
