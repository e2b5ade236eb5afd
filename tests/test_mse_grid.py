"""Data-free MSE grid: a brute-force reference, never worse than round to nearest, extremes kept, the option end to end."""

from __future__ import annotations

import numpy as np
import pytest
from test_full_range import rtn_memory_streamed
from test_mse_clipping import group_errors, heavy_tailed

from optimum_wc import ConfigError, WeightCompressionConfig
from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.quant.clipping import grid_steps
from optimum_wc.quant.lowering import dequantize, grouped, levels, quantize

MODES = [M.INT4_ASYM, M.INT4_SYM, M.INT3_SYM, M.INT2_SYM]


def deq(x: np.ndarray, s: np.float32, z: np.float32, mode) -> np.ndarray:
    low, high = levels(mode)
    return (np.clip(np.rint(np.divide(x, s, dtype=np.float32) + z), low, high) - z) * s


def reference(group: np.ndarray, rtn_s: np.float32, rtn_z: np.float32, mode) -> tuple[float, float]:
    """Every documented candidate, one at a time, in float32 as RTN: the first with the smallest error wins."""
    n = 2**mode.num_bits - 1
    ends = np.array([group.min(), group.max()], dtype=np.float32)
    bound = np.maximum(abs(float(rtn_s)) / 2, np.abs(deq(ends, rtn_s, rtn_z, mode) - ends).astype(np.float64)) * (1 + 1e-6)
    best = (np.sum(np.square(deq(group, rtn_s, rtn_z, mode) - group, dtype=np.float64)), float(rtn_s), float(rtn_z))
    lo = np.float32(min(float(group.min()), 0.0))
    for f in grid_steps(mode.num_bits):
        s = np.float32(np.float16(rtn_s * np.float32(f)))
        zs = [np.float32(np.clip(np.rint(-lo / s) + d, 0, n)) for d in (-1, 0, 1)] if mode.is_asym else [np.float32(0)]
        for z in zs:
            if np.any(np.abs(deq(ends, s, z, mode) - ends) > bound):
                continue
            err = np.sum(np.square(deq(group, s, z, mode) - group, dtype=np.float64))
            if err < best[0]:
                best = (err, float(s), float(z))
    return best[1], best[2]


@pytest.mark.parametrize("mode", MODES)
def test_the_grid_equals_a_brute_force_search(mode):
    w = heavy_tailed(11, (6, 64))
    rtn, cw = quantize(w, mode, 32, 1), quantize(w, mode, 32, 1, ranges="grid")
    zero = lambda c, r, g: np.float32(c.zero_point[r, g, 0]) if mode.is_asym else np.float32(0)  # noqa: E731
    changed = 0
    for r in range(6):
        for g in range(2):
            s, z = reference(w[r, g * 32 : (g + 1) * 32], rtn.scale[r, g, 0], zero(rtn, r, g), mode)
            assert cw.scale[r, g, 0] == np.float32(s), (r, g)
            assert zero(cw, r, g) == z, (r, g)
            changed += cw.scale[r, g, 0] != rtn.scale[r, g, 0]
    assert changed > 0  # the search moved some groups off round to nearest's grid


@pytest.mark.parametrize("gs", [32, 128, -1])
@pytest.mark.parametrize("mode", MODES)
def test_never_worse_than_round_to_nearest_and_the_extremes_are_kept(mode, gs):
    w = heavy_tailed(12)
    rtn, grid = quantize(w, mode, gs, 1), quantize(w, mode, gs, 1, ranges="grid")
    size = w.shape[1] if gs == -1 else gs
    e_rtn, e_grid = group_errors(w, rtn, size), group_errors(w, grid, size)
    assert np.all(e_grid <= e_rtn)
    assert e_grid.sum() < 0.97 * e_rtn.sum()  # a real gain on heavy-tailed weights, not a tie
    g, _ = grouped(w, 1, size)
    d_rtn, _ = grouped(np.abs(dequantize(rtn) - w), 1, size)
    d_grid, _ = grouped(np.abs(dequantize(grid) - w), 1, size)
    half = np.abs(rtn.scale.reshape(g.shape[:2])).astype(np.float64) / 2
    for pick in (np.argmin, np.argmax):  # each group's smallest and largest weight
        at = pick(g, axis=-1)[..., None]
        bound = np.maximum(half, np.take_along_axis(d_rtn, at, -1)[..., 0])
        assert np.all(np.take_along_axis(d_grid, at, -1)[..., 0] <= bound * (1 + 1e-5))
    moved = grid.scale != rtn.scale  # the IR stores scales in float16: every searched step is exact there
    assert np.any(moved)
    assert np.array_equal(grid.scale[moved].astype(np.float16).astype(np.float32), grid.scale[moved])


@pytest.mark.parametrize("magnitude", [1e5, 1e-9, 1e-30, 0.0])
@pytest.mark.parametrize("mode", MODES)
def test_extreme_magnitudes_keep_round_to_nearest_safely(mode, magnitude):
    """Steps beyond float16's range (or below eps) are no candidates: no warning, no larger error, finite scales."""
    import warnings

    w = heavy_tailed(14, (4, 64)) * np.float32(magnitude / 0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rtn, grid = quantize(w, mode, 32, 1), quantize(w, mode, 32, 1, ranges="grid")
    assert np.all(np.isfinite(grid.scale))
    assert np.all(group_errors(w, grid, 32) <= group_errors(w, rtn, 32))


@pytest.mark.parametrize("gs", [32, 100, 64, -1])
@pytest.mark.parametrize("mode", MODES)
def test_the_kernel_chooses_what_the_numpy_reference_chooses(mode, gs):
    """The numba search and the NumPy reference sum each group's error in one order: same scales, same codes."""
    from optimum_wc.quant import kernels
    from optimum_wc.quant.lowering import use_fused_kernel

    if not kernels.available():
        pytest.skip("numba is not installed: only the NumPy reference runs")
    w = heavy_tailed(15, (40, 1600))
    w[3] = 0.25  # a constant row and a one-signed one
    w[4] = np.abs(w[4])
    try:
        use_fused_kernel(False)
        ref = quantize(w, mode, gs, 1, ranges="grid")
        use_fused_kernel(True)
        fused = quantize(w, mode, gs, 1, ranges="grid")
    finally:
        use_fused_kernel(True)
    assert np.array_equal(fused.scale, ref.scale) and np.array_equal(fused.codes, ref.codes)
    assert (ref.zero_point is None) == (fused.zero_point is None)
    if ref.zero_point is not None:
        assert np.array_equal(fused.zero_point, ref.zero_point)


def test_a_shifted_grid_is_found():
    """Weights on a 4-bit grid whose offset is not a whole step (as GGUF Q4_1 blocks): RTN errs by a constant shift."""
    rng = np.random.default_rng(13)
    step, offset = np.float32(0.01), np.float32(-0.0737)
    w = (rng.integers(0, 16, size=(8, 32)).astype(np.float32) * step + offset)
    w[:, 0], w[:, 1] = offset, offset + 15 * step  # both ends used, as a 4-bit block's are
    rtn, grid = quantize(w, M.INT4_ASYM, 32, 1), quantize(w, M.INT4_ASYM, 32, 1, ranges="grid")
    assert group_errors(w, grid, 32).sum() < 0.7 * group_errors(w, rtn, 32).sum()  # measured 0.58


def test_the_option_is_validated_and_reaches_the_command_line():
    import argparse

    from optimum_wc.cli.options import add_export_options, config_from_args

    with pytest.raises(ConfigError, match=r"mse_grid=True searches integer grids of 2-4 bits; mode=int8_asym has none"):
        WeightCompressionConfig(mode="int8_asym", mse_grid=True)
    with pytest.raises(ConfigError, match=r"mode=nf4 has none"):
        WeightCompressionConfig(mode="nf4", mse_grid=True)
    for other in ("full_range", "mse_clipping"):
        with pytest.raises(ConfigError, match=rf"mse_grid=True and {other}=True each choose .* set one of them to False"):
            WeightCompressionConfig(mode="int4_asym", mse_grid=True, **{other: True})
    with pytest.raises(ConfigError, match=r"mse_grid=1 must be True or False"):
        WeightCompressionConfig(mode="int4_asym", mse_grid=1)
    on = WeightCompressionConfig(mode="int4_sym", mse_grid=True)
    assert WeightCompressionConfig.from_dict(on.to_dict()) == on and on.range_rule == "grid"
    assert "mse_grid" not in WeightCompressionConfig(mode="int4_asym").to_dict()  # off: configs stay as they were
    parser = argparse.ArgumentParser()
    add_export_options(parser)
    assert config_from_args(parser.parse_args(["m", "o", "--weight-format", "int4", "--mse-grid"])).mse_grid is True


def test_end_to_end_the_ir_holds_the_searched_grid(llama_dir, llama_ir, read_ir, tmp_path):
    """In-memory and streamed exports agree byte for byte, and their codes and scales differ from RTN's."""
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, ratio=1.0, mse_grid=True)
    rtn, mem, streamed = rtn_memory_streamed(config, llama_dir, llama_ir, read_ir, tmp_path)
    assert mem["u4"] and streamed["u4"] == mem["u4"] and streamed["f16"] == mem["f16"]
    assert rtn["u4"].keys() == mem["u4"].keys() and rtn["u4"] != mem["u4"]
    assert rtn["f16"] != mem["f16"]  # the scales moved too
