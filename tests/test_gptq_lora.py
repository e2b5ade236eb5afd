"""GPTQ and LoRA correction: property tests on single layers, a loop-based GPTQ reference, and end to end."""

from __future__ import annotations

from collections import Counter

import numpy as np
import openvino as ov
import pytest

from conftest import CALIBRATION_TEXT, run_logits
from test_data_aware import output_error, outlier_layer
from optimum_wc import WeightCompressionConfig, compress_model
from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.ir.rt_info import read_rt_info
from optimum_wc.ir.sites import read_weight
from optimum_wc.quant.gptq import gptq_quantize
from optimum_wc.quant.lora import fit_lora
from optimum_wc.quant.formats import codebook_of
from optimum_wc.quant.lowering import asymmetric_params, dequantize, levels, quantize, symmetric_scale

CALIB = CALIBRATION_TEXT
CASES = [(M.INT4_ASYM, 32), (M.INT4_SYM, 32), (M.INT4_ASYM, -1), (M.INT4_SYM, 16)]


def hessian(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 2 * x.T @ x / x.shape[0]


def correlated_layer(seed: int = 0, out: int = 32, cin: int = 64, n: int = 512):
    """Inputs with strongly correlated channels (where GPTQ's compensation pays off) and a few outliers."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, cin)).astype(np.float32) * 0.05
    mix = np.eye(cin) + 0.5 * rng.standard_normal((cin, cin)) / np.sqrt(cin)
    x = (rng.standard_normal((n, cin)) @ mix).astype(np.float32)
    x[:, [1, 17]] *= 10.0
    return w, x


def reference_gptq(w: np.ndarray, h: np.ndarray, mode, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain GPTQ, one weight at a time, no lazy batching: (codes, dequantized weight)."""
    w = np.array(w, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    out_ch, in_ch = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += 0.01 * np.mean(np.diag(h)) * np.eye(in_ch)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    gs = in_ch if group_size == -1 else group_size
    low, high = levels(mode)
    codes, deq = np.zeros_like(w), np.zeros_like(w)
    for j in range(in_ch):
        if j % gs == 0:  # entering a group: parameters from its current weights
            block = w[:, j : j + gs].astype(np.float32)
            if mode.is_asym:
                s, z = asymmetric_params(block, 1, 4)
                s, z = s[:, 0], z[:, 0].astype(np.float64)
            else:
                s, z = symmetric_scale(block, 1, 4)[:, 0], np.zeros(out_ch)
            s = s.astype(np.float16).astype(np.float64)
        for r in range(out_ch):
            q = min(max(np.rint(w[r, j] / s[r] + z[r]), low), high)
            codes[r, j], deq[r, j] = q, s[r] * (q - z[r])
            e = (w[r, j] - deq[r, j]) / u[j, j]
            for k in range(j + 1, in_ch):
                w[r, k] -= e * u[j, k]
    return codes, deq


def flat_codes(cw) -> np.ndarray:
    return cw.codes.reshape(cw.original_shape[0], -1).astype(np.int64)


@pytest.mark.parametrize("mode, gs", CASES)
def test_gptq_equals_a_loop_reference(mode, gs):
    w, x = correlated_layer(1, out=8, cin=64, n=256)
    x[:, 5] = 0.0  # a dead channel
    h = hessian(x)
    codes, deq = reference_gptq(w, h, mode, gs)
    cw = gptq_quantize(w, h, mode, gs, axis=1, block_size=32)  # several blocks, lazy updates between them
    assert np.array_equal(flat_codes(cw), codes.astype(np.int64))
    assert np.allclose(dequantize(cw), deq, rtol=0, atol=1e-6)


@pytest.mark.parametrize("block", [16, 64, 128])
def test_gptq_does_not_depend_on_the_block_size(block):
    w, x = correlated_layer(2)
    h = hessian(x)
    a = gptq_quantize(w, h, M.INT4_ASYM, 16, axis=1, block_size=block)
    b = gptq_quantize(w, h, M.INT4_ASYM, 16, axis=1, block_size=8)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scale, b.scale)


@pytest.mark.parametrize("mode, gs", CASES + [(M.NF4, 32), (M.NF4, -1), (M.CB4, 16), (M.INT3_SYM, 16), (M.INT2_SYM, 32)])
def test_gptq_beats_rtn(mode, gs):
    cb = codebook_of(mode)
    for w, x in (outlier_layer(), correlated_layer()):
        h = hessian(x)
        rtn = output_error(w, dequantize(quantize(w, mode, gs, 1, codebook=cb)), x)
        plain = output_error(w, dequantize(gptq_quantize(w, h, mode, gs, axis=1, codebook=cb)), x)
        se = output_error(w, dequantize(gptq_quantize(w, h, mode, gs, axis=1, scale_estimation=True, codebook=cb)), x)
        # at 2 bits plain GPTQ may lose to RTN on outlier inputs (its group ranges come from weights the
        # compensation already pushed); with scale estimation it must win
        assert (plain < rtn or mode.num_bits == 2) and se <= plain * (1 + 1e-6) and se < rtn, (rtn, plain, se)
    assert plain < 0.8 * rtn  # correlated inputs: a large gain


def test_gptq_transposed_weight_and_layout():
    w, x = correlated_layer(3)
    h = hessian(x)
    a = gptq_quantize(w, h, M.INT4_SYM, 16, axis=1, scale_estimation=True)
    b = gptq_quantize(np.ascontiguousarray(w.T), h, M.INT4_SYM, 16, axis=0, scale_estimation=True)
    assert a.codes.shape == (32, 4, 16) and a.scale.shape == (32, 4, 1) and a.codes.dtype == np.int8
    assert b.codes.shape == (4, 16, 32) and b.scale.shape == (4, 1, 32)
    assert np.allclose(dequantize(a), dequantize(b).T)
    c = gptq_quantize(w, h, M.INT4_ASYM, -1, axis=1)
    assert c.codes.shape == (32, 64) and c.zero_point.shape == (32, 1) and c.codes.max() <= 15
    assert np.array_equal(a.scale, a.scale.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("mode, gs", CASES + [(M.NF4, 32), (M.CB4, -1), (M.INT3_SYM, 16)])
def test_lora_correction_beats_rtn(mode, gs):
    for w, x, strict in ((*outlier_layer(), True), (*correlated_layer(), False)):
        base = dequantize(quantize(w, mode, gs, 1, codebook=codebook_of(mode)))
        rtn = output_error(w, base, x)
        adapter = fit_lora(w, base, hessian(x), rank=8)
        err = rtn if adapter is None else output_error(w, base + dequantize(adapter.b) @ dequantize(adapter.a), x)
        assert err <= rtn
        if strict:
            assert adapter is not None and err < 0.5 * rtn, (err, rtn)
            assert adapter.a.codes.shape == (8, w.shape[1]) and adapter.b.codes.shape == (w.shape[0], 8)
            assert adapter.a.codes.dtype == np.uint8 and adapter.a.zero_point.shape == (8, 1)


def test_lora_rank_is_validated():
    from optimum_wc import ConfigError

    with pytest.raises(ConfigError, match="lora_rank"):
        WeightCompressionConfig(mode="int4_asym", lora_correction=True, dataset=["x"], lora_rank=0)
    assert WeightCompressionConfig(lora_rank=4).to_dict()["lora_rank"] == 4


# -- end to end on the tiny Llama --------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


def fc_weight_precisions(model) -> Counter:
    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    fc = [op for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
    return Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str) for op in fc)


@pytest.mark.parametrize(
    "extra",
    [
        dict(gptq=True),
        dict(gptq=True, scale_estimation=True),
        dict(awq=True, gptq=True),
        dict(lora_correction=True),
        dict(lora_correction=True, awq=True, scale_estimation=True),
    ],
)
def test_end_to_end_keeps_fused_pattern(llama_ir, tokenizer, read_ir, extra):
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, dataset=str(CALIB), subset_size=8, sample_length=32, **extra)
    ids = np.random.default_rng(0).integers(3, 500, size=(1, 16)).astype(np.int64)
    ref = run_logits(read_ir(llama_ir), ids)
    rtn = run_logits(compress_model(read_ir(llama_ir), WeightCompressionConfig(mode="int4_asym", group_size=32)), ids)
    model = compress_model(read_ir(llama_ir), config, tokenizer=tokenizer)
    _, layers = read_rt_info(model)
    int4 = [l for l in layers if l["mode"] == "int4_asym" and l["kind"] == "matmul"]
    adapters = sum(1 for l in int4 if l.get("lora_error_ratio") is not None)
    if config.lora_correction:
        assert adapters >= len(int4) // 2
    precisions = fc_weight_precisions(model)
    assert precisions["u4"] == len(int4) and precisions["u8"] == 2 * adapters + sum(1 for l in layers if l["mode"] == "int8_asym" and l["kind"] == "matmul")
    out = run_logits(model, ids)
    scale = np.linalg.norm(ref - ref.mean())
    assert np.linalg.norm(out - ref) / scale < 0.3
    assert np.linalg.norm(out - ref) < 1.5 * np.linalg.norm(rtn - ref)


def test_gptq_same_data_same_bytes(llama_ir, tokenizer, read_ir, tmp_path):
    config = WeightCompressionConfig(mode="int4_sym", group_size=32, dataset=str(CALIB), subset_size=4, sample_length=32, gptq=True)
    for i in range(2):
        ov.save_model(compress_model(read_ir(llama_ir), config, tokenizer=tokenizer), tmp_path / f"m{i}.xml")
    assert (tmp_path / "m0.bin").read_bytes() == (tmp_path / "m1.bin").read_bytes()


# -- layer-wise passes: each starts from the previous pass's boundary --------------------------


def _passes(model, per_pass: int = 4):
    from optimum_wc.ir.sites import activation_source, find_weight_sites, ops_by_name, topological_positions

    nodes, position = ops_by_name(model), topological_positions(model)
    sites = [s for s in find_weight_sites(model)[0] if s.kind == "matmul" and "lm_head" not in s.op_names[0]]
    keys = sorted(dict.fromkeys(activation_source(nodes[s.op_names[0]]) for s in sites), key=lambda k: position[k[0]])
    return sites, [keys[i : i + per_pass] for i in range(0, len(keys), per_pass)]


@pytest.mark.parametrize("fixture", ["llama_ir", "gpt2_ir"])
def test_layerwise_passes_see_the_partially_compressed_model(fixture, request, read_ir, tokenizer):
    """Pass j, run from boundary j - 1 only, gives the X^T X of a full run of the model compressed so far."""
    from optimum_wc.calibration.hessians import LayerwiseHessians
    from optimum_wc.calibration.runners import StatisticsRunner
    from optimum_wc.ir.decompression import replace_with_compressed
    from optimum_wc.ir.probes import Probe, statistics_model
    from optimum_wc.ir.sites import activation_source, ops_by_name

    model = read_ir(request.getfixturevalue(fixture))
    sites, passes = _passes(model)
    rng = np.random.default_rng(0)
    samples = [rng.integers(3, 500, size=12) for _ in range(3)] + [rng.integers(3, 500, size=7)]
    layerwise = LayerwiseHessians(model, passes, samples, precision="f32")
    assert all(b is not None for b in layerwise.boundaries[:-1]) and layerwise.boundaries[-1] is None
    nodes = ops_by_name(model)
    source_of = {site.name: activation_source(nodes[site.op_names[0]]) for site in sites}
    for j, sources in enumerate(passes):
        got = layerwise.collect(j)
        full, layout = statistics_model(model, [Probe(s, xtx=True) for s in sources])
        runner = StatisticsRunner(full, "f32")
        for s in sources:
            ref = sum(runner.run(ids[None])[layout[(s, "xtx")]] for ids in samples)
            assert got[s].n_tokens == sum(len(ids) for ids in samples)
            assert np.allclose(got[s].xtx, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        for site in sites:  # compress this pass's layers before the next pass, as GPTQ does
            if source_of[site.name] in sources:
                replace_with_compressed(site, quantize(read_weight(site), M.INT4_ASYM, 16, site.reduction_axis))
    with pytest.raises(RuntimeError, match="in order"):
        layerwise.collect(0)


def test_layers_sharing_an_input_are_quantized_as_if_alone():
    from optimum_wc.quant.gptq import gptq_quantize_layers

    w, x = correlated_layer(3)
    h = hessian(x)
    other = np.random.default_rng(4).standard_normal((16, 64)).astype(np.float32) * 0.1
    together = gptq_quantize_layers([w, other.T.copy()], [1, 0], h, M.INT4_ASYM, 32, scale_estimation=True)
    for cw, (weight, axis) in zip(together, [(w, 1), (other.T.copy(), 0)]):
        alone = gptq_quantize(weight, h, M.INT4_ASYM, 32, axis, scale_estimation=True)
        assert cw.codes.shape == alone.codes.shape and np.array_equal(cw.codes, alone.codes)
        assert np.allclose(cw.scale, alone.scale, rtol=1e-3) and np.array_equal(cw.zero_point, alone.zero_point)
        assert np.allclose(dequantize(cw), dequantize(alone), rtol=1e-3, atol=1e-6)


def test_randomized_low_rank_factors_are_as_good_as_the_exact_truncated_svd():
    from optimum_wc.quant.lora import low_rank_factors, whitened_factor

    w, x = correlated_layer(5, out=48, cin=64)
    e = w - dequantize(quantize(w, M.INT4_ASYM, 32, 1))
    e = e.astype(np.float64) + np.outer(np.linspace(1, 2, 48), np.linspace(-1, 1, 64)) * 0.01  # a dominant direction
    chol = whitened_factor(hessian(x))
    a, b = low_rank_factors(e, chol, 4)
    m = e @ chol
    s = np.linalg.svd(m, compute_uv=False)
    optimum = float(np.sum(s[4:] ** 2))  # residual of the best rank-4 approximation (Eckart-Young)
    residual = float(np.sum((m - b @ a @ chol) ** 2))
    assert optimum <= residual <= 1.01 * optimum
    assert float(np.sum((m - b[:, :3] @ a[:3] @ chol) ** 2)) > 1.05 * optimum  # rank 4 matters here


def test_lora_reported_errors_are_the_output_errors():
    w, x = correlated_layer(6)
    base = dequantize(quantize(w, M.INT4_SYM, 16, 1))
    h = hessian(x)
    adapter = fit_lora(w, base, h, rank=4)
    e = w.astype(np.float64) - base
    direct = lambda d: float(np.einsum("oi,oi->", d @ h, d))  # noqa: E731
    assert np.isclose(adapter.error_before, direct(e), rtol=1e-9)
    corrected = e - dequantize(adapter.b).astype(np.float64) @ dequantize(adapter.a).astype(np.float64)
    assert np.isclose(adapter.error_after, direct(corrected), rtol=1e-7) and adapter.error_after < adapter.error_before
