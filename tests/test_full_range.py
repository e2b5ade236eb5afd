"""Data-free full range: the smallest asymmetric step covering each group, brute-force checked, and the option end to end."""

from __future__ import annotations

import numpy as np
import pytest
from test_mse_clipping import heavy_tailed

from optimum_wc import ConfigError, WeightCompressionConfig, compress_model
from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.quant.lowering import dequantize, grouped, quantize


def as_groups(a: np.ndarray, gs: int) -> np.ndarray:
    """``a [out, in]`` as ``[out, n_groups, gs]`` (one group per row for ``gs == -1``)."""
    return a[:, None, :] if gs == -1 else grouped(a, 1, gs)[0]


def covering_step(lo: float, hi: float, z: int, n: int) -> float:
    """The smallest float16 step whose grid ``s * ([0, n] - z)`` contains ``[lo, hi]`` (inf if none)."""
    need = max(hi / (n - z) if z < n else (0.0 if hi <= 0 else np.inf), -lo / z if z > 0 else (0.0 if lo >= 0 else np.inf))
    if not np.isfinite(need):
        return np.inf
    s = np.float16(need)
    return float(s if float(s) >= need else np.nextafter(s, np.float16(np.inf)))


@pytest.mark.parametrize("gs", [16, 32, -1])
def test_the_step_is_the_smallest_covering_one_over_every_zero_point(gs):
    w = heavy_tailed(4, (8, 64))
    cw = quantize(w, M.INT4_ASYM, gs, 1, ranges="full")
    groups = as_groups(w, gs)
    scales, zps = cw.scale.reshape(groups.shape[:2]), cw.zero_point.reshape(groups.shape[:2])
    for r in range(groups.shape[0]):
        for g in range(groups.shape[1]):
            lo, hi = min(float(groups[r, g].min()), 0.0), max(float(groups[r, g].max()), 0.0)
            best = min(covering_step(lo, hi, z, 15) for z in range(16))
            assert scales[r, g] == np.float32(best), (r, g)
            assert covering_step(lo, hi, int(zps[r, g]), 15) == best  # its zero point achieves it


def grid_covers(cw, w: np.ndarray, gs: int) -> np.ndarray:
    """Per group: the grid's ends ``-z s`` and ``(15 - z) s`` contain ``[min(w, 0), max(w, 0)]`` (nothing clipped)."""
    g = as_groups(w, gs)
    s = cw.scale.reshape(g.shape[:2]).astype(np.float64)
    z = cw.zero_point.reshape(g.shape[:2]).astype(np.float64)
    return (-z * s <= np.minimum(g.min(-1), 0)) & ((15 - z) * s >= np.maximum(g.max(-1), 0))


@pytest.mark.parametrize("gs", [32, 128, -1])
def test_no_weight_is_clipped_and_the_step_grows_little(gs):
    w = heavy_tailed(5)
    rtn, full = quantize(w, M.INT4_ASYM, gs, 1), quantize(w, M.INT4_ASYM, gs, 1, ranges="full")
    assert np.array_equal(full.scale.astype(np.float16).astype(np.float32), full.scale)  # exact in the IR's f16
    assert np.all(grid_covers(full, w, gs))
    assert not np.all(grid_covers(rtn, w, gs))  # RTN's rounded zero point clips an end of some groups
    err = as_groups(np.abs(dequantize(full) - w), gs)
    s_full, s_rtn = (cw.scale.reshape(err.shape[:2]) for cw in (full, rtn))
    assert np.all(err.max(axis=-1) <= s_full / 2 * (1 + 1e-5))  # every weight within half a step
    ulp = np.float32(2.0**-10)  # float16 rounding of RTN's step, up or down
    assert np.all(s_full <= s_rtn * np.float32(15 / 14) * (1 + 2 * ulp))


def test_one_signed_groups_keep_round_to_nearest():
    """A group of one sign is covered exactly by RTN (zero point 0 or 15): same codes, same step up to f16 rounding."""
    w = np.abs(heavy_tailed(6, (4, 64))) + np.float32(1e-3)
    for sign in (1, -1):
        rtn, full = quantize(sign * w, M.INT4_ASYM, 32, 1), quantize(sign * w, M.INT4_ASYM, 32, 1, ranges="full")
        assert np.array_equal(rtn.zero_point, full.zero_point)
        assert np.all(np.abs(full.scale / rtn.scale - 1) <= 2.0**-10)


def test_the_option_is_validated_and_reaches_the_command_line():
    import argparse

    from optimum_wc.cli.options import add_export_options, config_from_args

    with pytest.raises(ConfigError, match=r"full_range=True .* mode=int4_sym has none: set full_range=False or use int4_asym"):
        WeightCompressionConfig(mode="int4_sym", full_range=True)
    with pytest.raises(ConfigError, match=r"mode=int8_asym has none"):
        WeightCompressionConfig(mode="int8_asym", full_range=True)
    with pytest.raises(ConfigError, match=r"set one of them to False"):
        WeightCompressionConfig(mode="int4_asym", full_range=True, mse_clipping=True)
    with pytest.raises(ConfigError, match=r"full_range='yes' must be True or False"):
        WeightCompressionConfig(mode="int4_asym", full_range="yes")
    on = WeightCompressionConfig(mode="int4_asym", full_range=True)
    assert WeightCompressionConfig.from_dict(on.to_dict()) == on and on.range_rule == "full"
    assert "full_range" not in WeightCompressionConfig(mode="int4_asym").to_dict()  # off: configs stay as they were
    parser = argparse.ArgumentParser()
    add_export_options(parser)
    assert config_from_args(parser.parse_args(["m", "o", "--weight-format", "int4", "--full-range"])).full_range is True


def rtn_memory_streamed(config, llama_dir, llama_ir, read_ir, tmp_path) -> tuple[dict, dict, dict]:
    """Constants (``{element type: {name: bytes}}``) of round to nearest's IR and of ``config``'s IR, in memory and
    exported streamed, for the same group size."""
    import openvino as ov

    from optimum_wc import export_model

    rtn = compress_model(read_ir(llama_ir), WeightCompressionConfig(mode=config.mode, group_size=config.group_size,
                                                                    ratio=config.ratio))
    ov.save_model(compress_model(read_ir(llama_ir), config), tmp_path / "mem.xml", compress_to_fp16=False)
    export_model(llama_dir, tmp_path / "out", config, load=False)

    def consts(model) -> dict:
        out: dict = {}
        for op in model.get_ops():
            if op.get_type_name() == "Constant":
                out.setdefault(op.get_element_type().get_type_name(), {})[op.get_friendly_name()] = op.get_data().tobytes()
        return out

    core = ov.Core()
    return consts(rtn), consts(core.read_model(tmp_path / "mem.xml")), consts(core.read_model(tmp_path / "out" / "openvino_model.xml"))


def test_end_to_end_the_in_memory_and_streamed_exports_agree_and_differ_from_rtn(llama_dir, llama_ir, read_ir, tmp_path):
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, ratio=1.0, full_range=True)
    rtn, mem, streamed = rtn_memory_streamed(config, llama_dir, llama_ir, read_ir, tmp_path)
    assert mem["u4"] and streamed["u4"] == mem["u4"]
    assert rtn["u4"].keys() == mem["u4"].keys() and rtn["u4"] != mem["u4"]
