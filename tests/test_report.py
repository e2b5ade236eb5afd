"""compression_report.json: written by every export, and its figures agree with the IR itself."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from optimum_wc import WeightCompressionConfig

CODE_TYPES = {"int4_asym": "u4", "int4_sym": "i4", "int8_asym": "u8", "int8_sym": "i8"}


@pytest.fixture(scope="module")
def exported(llama_dir, tmp_path_factory) -> Path:
    from optimum_wc import export_model

    out = tmp_path_factory.mktemp("report") / "int4"
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, ratio=0.8, backup_mode="int8_sym")
    export_model(llama_dir, out, config, load=False)
    return out


def _constants(model) -> dict:
    return {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}


def test_export_writes_the_report(exported, llama_dir):
    report = json.loads((exported / "compression_report.json").read_text())
    assert report["compressed"] is True and report["source"] == "export"
    assert report["model"] == str(llama_dir)
    assert report["config"]["mode"] == "int4_asym" and report["config"]["ratio"] == 0.8
    assert set(report["timings"]) == {"export_s", "compress_s", "save_s"}
    assert all(v >= 0 for v in report["timings"].values())
    assert report["versions"]["openvino"] and report["versions"]["optimum-wc"] and report["versions"]["python"]
    for layer in report["layers"]:
        assert {"name", "mode", "group_size", "num_weights", "relative_error"} <= set(layer)
        assert layer["mode"] == "float" or 0 < layer["relative_error"] < 1


def test_report_figures_agree_with_the_ir(exported, read_ir):
    from optimum_wc.ir.rt_info import read_rt_info

    report = json.loads((exported / "compression_report.json").read_text())
    model = read_ir(exported / "openvino_model.xml")
    config, records = read_rt_info(model)
    assert config == report["config"]
    assert [(r["name"], r["mode"], r["group_size"], r["num_weights"]) for r in records] == [
        (r["name"], r["mode"], r["group_size"], r["num_weights"]) for r in report["layers"]
    ]
    # every layer's codes in the IR: element type of its mode, as many codes as weights, its group size
    constants = _constants(model)
    for layer in report["layers"]:
        codes = constants[layer["name"]]
        assert codes.get_element_type().get_type_name() == CODE_TYPES[layer["mode"]], layer["name"]
        shape = list(codes.get_output_shape(0))
        assert int(np.prod(shape)) == layer["num_weights"] == int(np.prod(layer["shape"]))
        if layer["group_size"] == -1:
            assert shape == layer["shape"]
        else:
            assert shape[-1] == layer["group_size"] and len(shape) == len(layer["shape"]) + 1
        has_zero_point = f"{layer['name']}/zero_point" in constants
        assert has_zero_point == layer["mode"].endswith("_asym")
    # totals: counts per mode from the IR's own constants
    t = report["totals"]
    ir_modes = Counter()
    ir_weights = Counter()
    for layer in report["layers"]:
        kind = constants[layer["name"]].get_element_type().get_type_name()
        ir_modes[kind] += 1
        ir_weights[kind] += int(np.prod(constants[layer["name"]].get_output_shape(0)))
    assert t["layers"] == len(records) == sum(ir_modes.values())
    assert t["num_weights"] == sum(ir_weights.values())
    by_type = Counter()
    for entry in t["by_mode"].values():
        by_type[CODE_TYPES[entry["mode"]]] += entry["layers"]
        assert entry["num_weights"] == sum(
            r["num_weights"] for r in report["layers"] if (r["mode"], r["group_size"]) == (entry["mode"], entry["group_size"])
        )
    assert by_type == ir_modes
    assert set(ir_modes) == {"u4", "i8"}  # ratio 0.8: 4-bit primary, int8_sym backup
    assert t["weights_by_bits"]["4-bit"] == ir_weights["u4"] and t["weights_by_bits"]["8-bit"] == ir_weights["i8"]
    rd = [r for r in report["layers"] if r["ratio_defining"]]
    share4 = sum(r["num_weights"] for r in rd if r["mode"] == "int4_asym") / sum(r["num_weights"] for r in rd)
    entry4 = next(e for e in t["by_mode"].values() if e["mode"] == "int4_asym")
    assert entry4["share_of_ratio_defining_weights"] == pytest.approx(share4, abs=1e-6)
    assert 0.6 <= share4 <= 0.9
    # sizes are the files'
    assert report["sizes"]["openvino_model.bin"] == (exported / "openvino_model.bin").stat().st_size
    assert report["sizes"]["compression_ratio"] > 2


def test_report_from_dir_matches_the_saved_one(exported):
    from optimum_wc.report import report_from_dir, summary

    saved = json.loads((exported / "compression_report.json").read_text())
    rebuilt = report_from_dir(exported)
    for key in ("config", "layers", "totals", "sizes", "timings", "model"):
        assert rebuilt[key] == saved[key], key
    text = summary(rebuilt)
    assert "Bit-width distribution" in text and "int4_asym, group size 32" in text and "int8_sym, per-channel" in text
    assert "smaller" in text


def test_float_export_report(llama_ir, tmp_path):
    from optimum_wc.report import build_report, summary

    import openvino as ov

    report = build_report(ov.Core().read_model(llama_ir), model_dir=llama_ir.parent)
    assert report["compressed"] is False and report["layers"] == [] and report["config"] is None
    assert report["totals"]["num_weights"] == 0
    assert "kept float" in summary(report)


def test_compress_ir_report(llama_ir, tmp_path, read_ir):
    from optimum_wc.export.pipeline import compress_ir_folder
    from optimum_wc.ir.rt_info import read_rt_info

    out = tmp_path / "int8"
    report = compress_ir_folder(llama_ir.parent, out, WeightCompressionConfig(mode="int8_sym"))
    assert json.loads((out / "compression_report.json").read_text())["layers"] == report["layers"]
    assert report["source"] == "compress" and report["totals"]["compressed_layers"] == report["totals"]["layers"] > 0
    _, records = read_rt_info(read_ir(out / "openvino_model.xml"))
    assert [r["name"] for r in records] == [r["name"] for r in report["layers"]]
    assert (out / "optimum_wc_config.json").is_file() and (out / "config.json").is_file()
    assert not list(tmp_path.glob(".int8.tmp-*"))  # staging folder moved into place


def test_stages_time_each_step():
    from optimum_wc.report import Stages

    stages = Stages(("a", "b"), progress=False)
    stages.start("a")
    stages.start("b")
    timings = stages.close()
    assert set(timings) == {"a_s", "b_s"} and all(v >= 0 for v in timings.values())
