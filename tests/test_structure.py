"""The seams of the package: schema versions, the one dispatch point of checkpoints, the per-layer step registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optimum_wc import ModelError, WeightCompressionConfig, compress_model
from optimum_wc.engine.steps import STEPS, step_for
from optimum_wc.ir.rt_info import read_rt_info
from optimum_wc.layout import CONFIG_FILE, SCHEMA_VERSION, write_config_file

INT4 = dict(mode="int4_asym", group_size=32)


# -- schema versions ---------------------------------------------------------------------------


def test_config_file_carries_its_schema_version(tmp_path):
    config = WeightCompressionConfig(mode="int4_sym", group_size=64, ratio=0.9)
    path = write_config_file(tmp_path, config.to_dict())
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert WeightCompressionConfig.from_json(path) == config
    legacy = tmp_path / "legacy.json"  # written before versioning: same layout, no version
    legacy.write_text(json.dumps(config.to_dict()))
    assert WeightCompressionConfig.from_json(legacy) == config


@pytest.mark.parametrize("value, message", [
    (SCHEMA_VERSION + 1, r"written by a newer optimum-wc \(schema version 2; this one reads up to 1\); upgrade"),
    ("one", r"schema_version='one' is not a version number; the file is damaged: re-export"),
])
def test_unknown_config_schema_is_refused(tmp_path, value, message):
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps({**WeightCompressionConfig().to_dict(), "schema_version": value}))
    with pytest.raises(ModelError, match=message):
        WeightCompressionConfig.from_json(path)


def test_rt_info_carries_its_schema_version(llama_ir, read_ir):
    model = compress_model(read_ir(llama_ir), WeightCompressionConfig(mode="int8_sym"))
    assert model.get_rt_info(["optimum_wc", "schema_version"]).astype(str) == str(SCHEMA_VERSION)
    config, layers = read_rt_info(model)
    assert config["mode"] == "int8_sym" and layers
    model.set_rt_info(str(SCHEMA_VERSION + 1), ["optimum_wc", "schema_version"])
    with pytest.raises(ModelError, match=r"rt_info .* written by a newer optimum-wc .* upgrade optimum-wc"):
        read_rt_info(model)


def test_report_of_a_newer_ir_fails_clearly(llama_ir, read_ir, tmp_path):
    import openvino as ov

    model = compress_model(read_ir(llama_ir), WeightCompressionConfig(mode="int8_sym"))
    model.set_rt_info("7", ["optimum_wc", "schema_version"])
    ov.save_model(model, tmp_path / "openvino_model.xml", compress_to_fp16=False)
    result = subprocess.run([sys.executable, "-m", "optimum_wc", "report", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "schema version 7; this one reads up to 1); upgrade optimum-wc" in result.stderr


# -- one dispatch point for checkpoints ----------------------------------------------------------


def test_every_export_path_goes_through_the_pipeline(llama_dir, tmp_path, monkeypatch):
    """export_model and optimum-intel's own class given our config (through the hook) both take the float model
    from export.pipeline.float_model (here streamed); the class without our config goes through export_ir."""
    import optimum_wc.export.pipeline as pipeline
    from optimum_wc import WeightCompressionConfig, export_model
    from optimum_wc.ir.rt_info import read_rt_info

    calls = []
    for name in ("float_model", "export_ir"):
        original = getattr(pipeline, name)

        def spy(model_id, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, str(model_id)))
            return _original(model_id, *args, **kwargs)

        monkeypatch.setattr(pipeline, name, spy)
    config = WeightCompressionConfig(mode="int8_sym")
    export_model(llama_dir, tmp_path / "out", config, load=False)
    assert calls == [("float_model", str(llama_dir))]
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(llama_dir, export=True, quantization_config=config, compile=False)
    assert calls[1:] == [("float_model", str(llama_dir))]
    assert WeightCompressionConfig.from_dict(read_rt_info(model.model)[0]) == config
    assert (tmp_path / "out" / "openvino_model.bin").read_bytes() == \
        (Path(model.model_save_dir) / "openvino_model.bin").read_bytes()  # the same streamed export
    OVModelForCausalLM.from_pretrained(llama_dir, export=True, compile=False)
    assert calls[2:] == [("export_ir", str(llama_dir))]


# -- per-layer steps, looked up from the config -----------------------------------------------------


@pytest.mark.parametrize("options, name, layerwise, statistics", [
    ({}, "rtn", False, False),
    ({"scale_estimation": True}, "scale_estimation", False, True),
    ({"gptq": True}, "gptq", True, False),
    ({"gptq": True, "scale_estimation": True}, "gptq+scale_estimation", True, False),
    ({"lora_correction": True}, "lora_correction", True, False),
    ({"lora_correction": True, "scale_estimation": True}, "scale_estimation+lora_correction", True, True),
    ({"awq": True}, "rtn", False, False),  # AWQ edits the float model; the layers are then rounded to nearest
])
def test_step_is_looked_up_from_the_config(options, name, layerwise, statistics):
    step = step_for(WeightCompressionConfig(**INT4, dataset=["text"] if options else None, **options))
    assert (step.name, step.layerwise, step.statistics) == (name, layerwise, statistics)
    assert step in STEPS.values()


def test_gptq_with_scale_estimation_collects_no_activation_statistics(llama_dir, llama_ir, read_ir, monkeypatch):
    """The step says what data it needs: GPTQ refits scales on its own Hessians, so no statistics pass runs."""
    from transformers import AutoTokenizer

    import optimum_wc.engine.compress as compress

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    monkeypatch.setattr(compress, "collect_statistics", lambda *a, **k: pytest.fail("statistics pass was run"))
    config = WeightCompressionConfig(**INT4, gptq=True, scale_estimation=True, dataset=["It is a truth"] * 4,
                                     subset_size=2, sample_length=16)
    compress_model(read_ir(llama_ir), config, tokenizer=tokenizer)
