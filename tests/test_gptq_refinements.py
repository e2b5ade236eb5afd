"""GPTQ's refinements: act-order with static groups (a loop reference, its gain on uneven activations) and the
rounds of code and scale refinement after it (never worse on the layer objective), and both options' plumbing."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_aware import output_error
from test_gptq_lora import CASES, correlated_layer, flat_codes, hessian

from optimum_wc import ConfigError, WeightCompressionConfig
from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.quant.gptq import gptq_quantize
from optimum_wc.quant.lowering import asymmetric_params, dequantize, levels, symmetric_scale
from optimum_wc.quant.refinement import refine_rounding


def reference_act_order(w: np.ndarray, h: np.ndarray, mode, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ one column at a time in decreasing ``H_jj`` order, each group's parameters fixed from the weights first."""
    w = np.array(w, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    out_ch, in_ch = w.shape
    dead = np.diag(h) == 0
    w[:, dead] = 0.0
    gs = in_ch if group_size == -1 else group_size
    s, z = np.zeros((out_ch, in_ch // gs)), np.zeros((out_ch, in_ch // gs))
    for g in range(in_ch // gs):
        block = w[:, g * gs : (g + 1) * gs].astype(np.float32)
        if mode.is_asym:
            scale, zero = asymmetric_params(block, 1, 4)
            s[:, g], z[:, g] = scale[:, 0], zero[:, 0]
        else:
            s[:, g] = symmetric_scale(block, 1, 4)[:, 0]
    s = s.astype(np.float16).astype(np.float64)
    order = sorted(range(in_ch), key=lambda j: (-h[j, j], j))
    hp = h[np.ix_(order, order)]
    hp[dead[order], dead[order]] = 1.0
    hp += 0.01 * np.mean(np.diag(hp)) * np.eye(in_ch)
    u = np.linalg.cholesky(np.linalg.inv(hp)).T
    wp = w[:, order]
    low, high = levels(mode)
    codes, deq = np.zeros_like(w), np.zeros_like(w)
    for k, j in enumerate(order):
        g = j // gs
        for r in range(out_ch):
            q = min(max(np.rint(wp[r, k] / s[r, g] + z[r, g]), low), high)
            codes[r, j], deq[r, j] = q, s[r, g] * (q - z[r, g])
            e = (wp[r, k] - deq[r, j]) / u[k, k]
            wp[r, k + 1 :] -= e * u[k, k + 1 :]
    return codes, deq


@pytest.mark.parametrize("mode, gs", CASES)
def test_act_order_equals_a_loop_reference(mode, gs):
    w, x = correlated_layer(4, out=8, cin=64, n=256)
    x[:, 9] = 0.0  # a dead channel: last in the order
    h = hessian(x)
    codes, deq = reference_act_order(w, h, mode, gs)
    cw = gptq_quantize(w, h, mode, gs, axis=1, block_size=32, act_order=True)  # several blocks, lazy updates
    assert np.array_equal(flat_codes(cw), codes.astype(np.int64))
    assert np.allclose(dequantize(cw), deq, rtol=0, atol=1e-6)


def test_act_order_is_plain_gptq_when_the_channels_are_already_in_order():
    w, x = correlated_layer(5)
    by_energy = np.argsort(-np.sum(x.astype(np.float64) ** 2, axis=0), kind="stable")
    w, x = w[:, by_energy], x[:, by_energy]  # H_jj decreasing, one group: the same columns in the same order
    h = hessian(x)
    order = np.argsort(-np.diag(h), kind="stable")
    assert np.array_equal(order, np.arange(len(order)))
    for mode in (M.INT4_ASYM, M.INT4_SYM):
        a = gptq_quantize(w, h, mode, -1, axis=1)
        b = gptq_quantize(w, h, mode, -1, axis=1, act_order=True)
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scale, b.scale)


@pytest.mark.parametrize("scale_estimation", [False, True])
@pytest.mark.parametrize("mode", [M.INT4_ASYM, M.INT4_SYM])
def test_act_order_lowers_the_output_error_when_channels_differ_in_scale(mode, scale_estimation):
    """LLM activations have a few channels far larger than the rest: quantized first, their error is absorbed by
    every other column (the reason for act-order).  Channel magnitudes spread as log-normal(0, 1)."""
    errors = []
    for seed in range(3):
        w, x = correlated_layer(seed, out=64, cin=256, n=2048)
        x = x * np.exp(np.random.default_rng(seed + 10).normal(0.0, 1.0, x.shape[1])).astype(np.float32)
        h = hessian(x)
        plain = gptq_quantize(w, h, mode, 64, axis=1, scale_estimation=scale_estimation)
        ordered = gptq_quantize(w, h, mode, 64, axis=1, scale_estimation=scale_estimation, act_order=True)
        errors.append((output_error(w, dequantize(ordered), x), output_error(w, dequantize(plain), x)))
    assert all(a < 0.95 * b for a, b in errors), errors


def test_the_option_is_validated_and_serialized_only_when_on():
    with pytest.raises(ConfigError, match=r"gptq_act_order=True orders GPTQ's columns, but gptq=False; "
                                          r"set gptq=True as well"):
        WeightCompressionConfig(mode="int4_asym", dataset=["text"], gptq_act_order=True)
    with pytest.raises(ConfigError, match=r"gptq_act_order='yes' must be True or False"):
        WeightCompressionConfig(mode="int4_asym", dataset=["text"], gptq=True, gptq_act_order="yes")
    on = WeightCompressionConfig(mode="int4_asym", dataset="wikitext", gptq=True, gptq_act_order=True)
    off = WeightCompressionConfig(mode="int4_asym", dataset="wikitext", gptq=True)
    assert on.to_dict()["gptq_act_order"] is True and "gptq_act_order" not in off.to_dict()
    assert WeightCompressionConfig.from_dict(on.to_dict()) == on and WeightCompressionConfig.from_dict(off.to_dict()) == off


def test_the_command_line_flag_sets_the_option():
    import argparse

    from optimum_wc.cli.options import add_export_options, config_from_args

    parser = argparse.ArgumentParser()
    add_export_options(parser)
    args = parser.parse_args(["model", "out", "--weight-format", "int4", "--dataset", "wikitext", "--gptq",
                              "--gptq-act-order"])
    assert config_from_args(args).gptq_act_order is True
    args = parser.parse_args(["model", "out", "--weight-format", "int4", "--dataset", "wikitext", "--gptq"])
    assert config_from_args(args).gptq_act_order is False


def objective(w: np.ndarray, cw, h: np.ndarray) -> float:
    d = dequantize(cw).astype(np.float64) - w
    return float(np.einsum("oi,oi->", d @ h, d))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("scale_estimation", [False, True])
@pytest.mark.parametrize("mode, gs", CASES)
def test_refinement_rounds_never_raise_the_layer_objective(mode, gs, scale_estimation, act_order):
    w, x = correlated_layer(6)
    x[:, 3] = 0.0  # a dead channel
    h = hessian(x)
    errors = [objective(w, gptq_quantize(w, h, mode, gs, axis=1, scale_estimation=scale_estimation,
                                          act_order=act_order, refine_rounds=r), h) for r in (0, 1, 3)]
    assert errors[1] <= errors[0] * (1 + 1e-9) and errors[2] <= errors[1] * (1 + 1e-9), errors
    assert errors[2] < 0.99 * errors[0], errors  # and it does improve on GPTQ's greedy result
    cw = gptq_quantize(w, h, mode, gs, axis=1, scale_estimation=scale_estimation, act_order=act_order, refine_rounds=3)
    low, high = levels(mode)
    assert cw.codes.min() >= (0 if mode.is_asym else low) and cw.codes.max() <= (15 if mode.is_asym else high)


def test_one_refinement_pass_is_the_best_single_step_of_each_code_in_turn():
    """Each code moves by the step in {-1, 0, +1} that lowers the objective most, given the codes before it."""
    rng = np.random.default_rng(7)
    w, x = correlated_layer(7, out=4, cin=24, n=128)
    h = hessian(x)
    scales = (np.abs(w).max(axis=1, keepdims=True) / 7).astype(np.float32)
    codes = np.clip(np.rint(w / scales) + rng.integers(-1, 2, w.shape), -8, 7).astype(np.float64)
    want = codes.copy()
    for j in range(w.shape[1]):
        for r in range(w.shape[0]):
            best, best_err = want[r, j], None
            for step in (0, -1, 1):
                trial = want.copy()
                trial[r, j] += step
                if not -8 <= trial[r, j] <= 7:
                    continue
                d = w[r] - trial[r] * scales[r, 0]
                err = d @ h @ d
                if best_err is None or err < best_err - 1e-12:
                    best, best_err = trial[r, j], err
            want[r, j] = best
    got = refine_rounding(w.astype(np.float64), codes, scales, None, h, M.INT4_SYM, -1, passes=1)
    assert np.array_equal(got, want)


def test_refinement_is_validated_and_reaches_the_command_line():
    import argparse

    from optimum_wc.cli.options import add_export_options, config_from_args

    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match=r"gptq_refine_rounds=.* must be an integer >= 0"):
            WeightCompressionConfig(mode="int4_asym", dataset=["text"], gptq=True, gptq_refine_rounds=bad)
    with pytest.raises(ConfigError, match=r"gptq_refine_rounds=2 refines GPTQ's result, but gptq=False"):
        WeightCompressionConfig(mode="int4_asym", dataset=["text"], gptq_refine_rounds=2)
    with pytest.raises(ConfigError, match=r"gptq_refine_rounds=2 moves integer codes; mode=nf4 is not an integer mode"):
        WeightCompressionConfig(mode="nf4", dataset=["text"], gptq=True, gptq_refine_rounds=2)
    on = WeightCompressionConfig(mode="int4_asym", dataset="wikitext", gptq=True, gptq_refine_rounds=3)
    assert on.to_dict()["gptq_refine_rounds"] == 3 and WeightCompressionConfig.from_dict(on.to_dict()) == on
    parser = argparse.ArgumentParser()
    add_export_options(parser)
    args = parser.parse_args(["model", "out", "--weight-format", "int4", "--dataset", "wikitext", "--gptq",
                              "--gptq-refine-rounds", "3"])
    assert config_from_args(args).gptq_refine_rounds == 3
