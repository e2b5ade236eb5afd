"""GPTAQ (``gptq_asymmetric``): GPTQ aimed at the float layer's output on the float model's inputs.

The property: with inputs ``X`` (float model) and ``X~`` (the partially
compressed model's), the asymmetric objective ``||X W^T - X~ Q^T||^2`` is lower
than plain GPTQ's result gives; with ``X~ = X`` the option changes nothing;
and the layer-wise passes compute the cross term from a float reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gptq_lora import CASES, correlated_layer, flat_codes, hessian

from optimum_wc import ConfigError, WeightCompressionConfig
from optimum_wc.quant.gptq import asymmetric_target, gptq_quantize, inverse_hessian_factor
from optimum_wc.quant.lowering import dequantize


def asym_error(w, deq, x, xq) -> float:
    d = x @ w.T - xq @ deq.T
    return float(np.vdot(d, d))


def drifted(x: np.ndarray, seed: int) -> np.ndarray:
    """Inputs as an earlier quantized layer leaves them: a correlated perturbation of ``x``."""
    rng = np.random.default_rng(seed)
    mix = np.eye(x.shape[1]) + 0.15 * rng.standard_normal((x.shape[1], x.shape[1])) / np.sqrt(x.shape[1])
    return (x @ mix + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)


def cross_term(x: np.ndarray, xq: np.ndarray) -> np.ndarray:
    return 2 * (x.astype(np.float64) - xq).T @ xq.astype(np.float64) / x.shape[0]


@pytest.mark.parametrize("mode, gs", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptaq_lowers_the_error_against_the_float_layer(mode, gs, seed):
    w, x = correlated_layer(seed, out=16, cin=64, n=512)
    xq = drifted(x, seed + 10)
    h = hessian(xq)
    plain = dequantize(gptq_quantize(w, h, mode, gs, axis=1))
    gptaq = dequantize(gptq_quantize(w, h, mode, gs, axis=1, cross=cross_term(x, xq)))
    assert asym_error(w, gptaq, x, xq) < asym_error(w, plain, x, xq)


def test_target_solves_the_unconstrained_problem():
    w, x = correlated_layer(3, out=8, cin=32, n=256)
    xq = drifted(x, 4)
    factor = inverse_hessian_factor(hessian(xq), percdamp=1e-10)
    target = asymmetric_target(w.astype(np.float64), cross_term(x, xq), factor, alpha=1.0)
    gradient = xq.astype(np.float64).T @ (xq @ target.T - x @ w.T.astype(np.float64))
    assert np.abs(gradient).max() < 1e-6 * np.abs(xq.T @ (x @ w.T)).max()


def test_no_drift_no_change():
    w, x = correlated_layer(5, out=8, cin=64, n=256)
    h = hessian(x)
    for kw in ({}, {"act_order": True, "scale_estimation": True, "refine_rounds": 1}):
        a = gptq_quantize(w, h, CASES[0][0], CASES[0][1], axis=1, **kw)
        b = gptq_quantize(w, h, CASES[0][0], CASES[0][1], axis=1, cross=np.zeros_like(h), **kw)
        assert np.array_equal(flat_codes(a), flat_codes(b))
        assert np.allclose(dequantize(a), dequantize(b), rtol=0, atol=1e-6)


def test_layerwise_cross_term_is_zero_against_an_identical_reference(llama_ir, read_ir):
    """Nothing compressed between passes: the reference sees the same inputs, so P = 0 exactly (f32 passes)."""
    from optimum_wc.calibration.hessians import LayerwiseHessians

    model = read_ir(llama_ir)
    passes = _passes(model)
    samples = [np.arange(3, 40, dtype=np.int64), np.arange(50, 90, dtype=np.int64)]
    plain = LayerwiseHessians(model, passes, samples, precision="f32")
    asym = LayerwiseHessians(model, passes, samples, precision="f32", reference=read_ir(llama_ir))
    for j in range(len(passes)):
        a, b = plain.collect(j), asym.collect(j)
        for key in passes[j]:
            assert a[key].cross_term is None
            assert np.allclose(a[key].xtx, b[key].xtx, rtol=1e-5, atol=1e-5 * np.abs(a[key].xtx).max())
            assert np.abs(b[key].cross_term).max() == 0.0


def _passes(model):
    from optimum_wc.ir.sites import activation_source, find_weight_sites, ops_by_name

    sites, _ = find_weight_sites(model)
    nodes = ops_by_name(model)
    sources = list(dict.fromkeys(activation_source(nodes[s.op_names[0]]) for s in sites if s.kind == "matmul"))[:6]
    return [sources[:3], sources[3:]]


def test_in_graph_cross_term_equals_the_float_reference_against_the_compressed_inputs(llama_ir, read_ir):
    """P = 2/N sum (X_float - X~)^T X~, reduced in the statistics graph, equals NumPy on the raw activations."""
    from optimum_wc.calibration.hessians import LayerwiseHessians
    from optimum_wc.calibration.runners import StatisticsRunner
    from optimum_wc.ir.decompression import replace_with_compressed
    from optimum_wc.ir.probes import Probe, statistics_model
    from optimum_wc.ir.sites import activation_source, find_weight_sites, ops_by_name, read_weight
    from optimum_wc.config import CompressWeightsMode as M
    from optimum_wc.quant.lowering import quantize

    model, reference = read_ir(llama_ir), read_ir(llama_ir)
    passes = _passes(model)
    samples = [np.arange(3, 40, dtype=np.int64), np.arange(50, 90, dtype=np.int64)]
    asym = LayerwiseHessians(model, passes, samples, precision="f32", reference=reference)
    sites, _ = find_weight_sites(model)
    nodes = ops_by_name(model)
    asym.collect(0)
    for site in sites:  # compress pass 0's layers: pass 1's inputs now drift from the float model's
        if site.kind == "matmul" and activation_source(nodes[site.op_names[0]]) in passes[0]:
            replace_with_compressed(site, quantize(read_weight(site), M.INT4_ASYM, 16, site.reduction_axis))
    got = asym.collect(1)
    raw = lambda m: statistics_model(m, [Probe(s, raw=True) for s in passes[1]])  # noqa: E731
    (qm, layout), (fm, _) = raw(model), raw(reference)
    q_run, f_run = StatisticsRunner(qm, "f32"), StatisticsRunner(fm, "f32")
    for s in passes[1]:
        xs = [q_run.run(ids[None])[layout[(s, "raw")]][0] for ids in samples]
        fs = [f_run.run(ids[None])[layout[(s, "raw")]][0] for ids in samples]
        want = sum((f - x).T.astype(np.float64) @ x for f, x in zip(fs, xs)) * 2.0 / sum(map(len, samples))
        assert np.abs(want).max() > 0  # the inputs did drift
        assert np.allclose(got[s].cross_term, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_option_plumbing(llama_ir, read_ir):
    with pytest.raises(ConfigError, match="gptq=True as well"):
        WeightCompressionConfig(mode="int4_asym", group_size=32, gptq_asymmetric=True, dataset="auto")
    base = dict(mode="int4_asym", group_size=32, gptq=True, dataset="auto", subset_size=4, sample_length=32)
    assert "gptq_asymmetric" not in WeightCompressionConfig(**base).to_dict()  # off: configs stay as they were
    cfg = WeightCompressionConfig(**base, gptq_asymmetric=True)
    assert WeightCompressionConfig.from_dict(cfg.to_dict()) == cfg
    from optimum_wc import compress_model

    samples = [{"input_ids": np.arange(3 + k, 35 + k, dtype=np.int64)[None]} for k in range(4)]
    plain = compress_model(read_ir(llama_ir), WeightCompressionConfig(**base), samples)
    asym = compress_model(read_ir(llama_ir), cfg, samples)
    codes = lambda m: [c.get_data().copy() for c in m.get_ops() if c.get_type_name() == "Constant"  # noqa: E731
                       and str(c.get_element_type()) == "<Type: 'uint4_t'>"]
    assert len(codes(plain)) == len(codes(asym)) > 0
    assert any(not np.array_equal(a, b) for a, b in zip(codes(plain), codes(asym)))
