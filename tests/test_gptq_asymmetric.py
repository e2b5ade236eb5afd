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
    """Nothing compressed between passes: the reference sees the same inputs, so P = 0 exactly."""
    from optimum_wc.calibration.hessians import LayerwiseHessians
    from optimum_wc.ir.sites import activation_source, find_weight_sites, ops_by_name

    model = read_ir(llama_ir)
    sites, _ = find_weight_sites(model)
    nodes = ops_by_name(model)
    sources = list(dict.fromkeys(activation_source(nodes[s.op_names[0]]) for s in sites if s.kind == "matmul"))[:6]
    passes = [sources[:3], sources[3:]]
    samples = [np.arange(3, 40, dtype=np.int64), np.arange(50, 90, dtype=np.int64)]
    plain = LayerwiseHessians(model, passes, samples)
    asym = LayerwiseHessians(model, passes, samples, reference=read_ir(llama_ir))
    for j in range(len(passes)):
        a, b = plain.collect(j), asym.collect(j)
        for key in passes[j]:
            assert a[key].cross_term is None
            # the extra raw output changes how the CPU plugin fuses the bf16 pass: equal to bf16 precision
            assert np.allclose(a[key].xtx, b[key].xtx, rtol=1e-2, atol=1e-2 * np.abs(a[key].xtx).max())
            assert np.abs(b[key].cross_term).max() == 0.0


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
