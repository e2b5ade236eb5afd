"""Data-free MSE clipping: a brute-force reference, never a larger group error than RTN, and the option end to end."""

from __future__ import annotations

import numpy as np
import pytest

from optimum_wc import ConfigError, WeightCompressionConfig, compress_model
from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.ir.rt_info import read_rt_info
from optimum_wc.quant.clipping import CLIP_GRID
from optimum_wc.quant.lowering import asymmetric_params, dequantize, grouped, levels, quantize, symmetric_scale

MODES = [M.INT4_ASYM, M.INT4_SYM, M.INT3_SYM, M.INT2_SYM]


def heavy_tailed(seed: int = 0, shape=(48, 256)) -> np.ndarray:
    return (np.random.default_rng(seed).standard_t(3, size=shape) * 0.02).astype(np.float32)


def group_errors(w: np.ndarray, cw, gs: int) -> np.ndarray:
    d, _ = grouped(dequantize(cw) - w, 1, gs)
    return np.sum(d.astype(np.float64) ** 2, axis=-1)


def reference_scale(group: np.ndarray, mode) -> tuple[float, float]:
    """Try every alpha of the grid on one group (float32 arithmetic as RTN's); the first best wins."""
    low, high = levels(mode)
    best = None
    for alpha in CLIP_GRID:
        if mode.is_asym:
            lo = np.float32(min(group.min(), 0.0)) * np.float32(alpha)
            hi = np.float32(max(group.max(), 0.0)) * np.float32(alpha)
            s, z = asymmetric_params(np.array([[lo, hi]], dtype=np.float32), 1, mode.num_bits)
            s, z = s[0, 0], np.float32(z[0, 0])
        else:
            s, z = symmetric_scale(group[None], 1, mode.num_bits)[0, 0] * np.float32(alpha), np.float32(0)
        q = np.clip(np.rint(np.divide(group, s, dtype=np.float32) + z), low, high)
        err = np.sum(np.square((q - z) * s - group, dtype=np.float64))
        if best is None or err < best[0]:
            best = (err, float(s), float(z))
    return best[1], best[2]


@pytest.mark.parametrize("mode", MODES)
def test_clipping_equals_a_brute_force_search(mode):
    w = heavy_tailed(1, (6, 64))
    cw = quantize(w, mode, 32, 1, ranges="mse")
    for r in range(6):
        for g in range(2):
            s, z = reference_scale(w[r, g * 32 : (g + 1) * 32], mode)
            assert np.isclose(cw.scale[r, g, 0], s, rtol=1e-6, atol=0), (r, g)
            if mode.is_asym:
                assert cw.zero_point[r, g, 0] == z


@pytest.mark.parametrize("gs", [32, 128, -1])
@pytest.mark.parametrize("mode", MODES)
def test_no_group_error_exceeds_round_to_nearest(mode, gs):
    w = heavy_tailed(2)
    rtn, clipped = quantize(w, mode, gs, 1), quantize(w, mode, gs, 1, ranges="mse")
    size = w.shape[1] if gs == -1 else gs
    a, b = group_errors(w, rtn, size), group_errors(w, clipped, size)
    assert np.all(b <= a * (1 + 1e-6)), np.max(b / a)
    assert b.sum() < 0.97 * a.sum()  # heavy tails: clipping pays
    assert np.isclose(clipped.sq_error, b.sum(), rtol=1e-4)


def test_large_weights_split_into_blocks_give_the_same_result():
    w = heavy_tailed(3, (1100, 512))  # more than two blocks of 2^18 elements
    whole = quantize(w[:40], M.INT4_ASYM, 64, 1, ranges="mse")
    split = quantize(w, M.INT4_ASYM, 64, 1, ranges="mse")
    assert np.array_equal(split.codes[:40], whole.codes) and np.array_equal(split.scale[:40], whole.scale)


def test_the_option_is_validated_and_reaches_the_command_line():
    import argparse

    from optimum_wc.cli.options import add_export_options, config_from_args

    with pytest.raises(ConfigError, match=r"mse_clipping=True clips integer grids of 2-4 bits; mode=int8_asym has none"):
        WeightCompressionConfig(mode="int8_asym", mse_clipping=True)
    with pytest.raises(ConfigError, match=r"mode=nf4 has none"):
        WeightCompressionConfig(mode="nf4", mse_clipping=True)
    on = WeightCompressionConfig(mode="int4_asym", mse_clipping=True)
    assert on.to_dict()["mse_clipping"] is True and "mse_clipping" not in WeightCompressionConfig(mode="int4_asym").to_dict()
    parser = argparse.ArgumentParser()
    add_export_options(parser)
    args = parser.parse_args(["model", "out", "--weight-format", "int4", "--mse-clipping"])
    assert config_from_args(args).mse_clipping is True


def test_end_to_end_lower_layer_errors_and_the_streamed_export_agrees(llama_dir, llama_ir, read_ir, tmp_path):
    import openvino as ov

    from optimum_wc import export_model

    rtn_config = WeightCompressionConfig(mode="int4_asym", group_size=32)
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, mse_clipping=True)
    rtn = {l["name"]: l for l in read_rt_info(compress_model(read_ir(llama_ir), rtn_config))[1]}
    model = compress_model(read_ir(llama_ir), config)
    layers = [l for l in read_rt_info(model)[1] if l["mode"] == "int4_asym"]
    assert layers and all(l["relative_error"] <= rtn[l["name"]]["relative_error"] * (1 + 1e-6) for l in layers)
    assert sum(l["relative_error"] for l in layers) < 0.99 * sum(rtn[l["name"]]["relative_error"] for l in layers)
    # the streamed export (data-free: constants written layer by layer) takes the same ranges
    export_model(llama_dir, tmp_path / "out", config, load=False)
    ov.save_model(model, tmp_path / "mem.xml", compress_to_fp16=False)
    streamed = ov.Core().read_model(tmp_path / "out" / "openvino_model.xml")
    mem = ov.Core().read_model(tmp_path / "mem.xml")
    u4 = lambda m: {op.get_friendly_name(): op.get_data().tobytes() for op in m.get_ops()  # noqa: E731
                    if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "u4"}
    assert u4(streamed) and u4(streamed) == u4(mem)
