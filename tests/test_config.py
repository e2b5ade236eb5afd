"""WeightCompressionConfig: defaults, coercion, validation messages, JSON and optimum-intel round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optimum_wc import (
    BackupMode,
    CompressWeightsMode,
    ConfigError,
    GroupSizeFallback,
    IgnoredScope,
    OptimumWCError,
    SensitivityMetric,
    WeightCompressionConfig,
)


def test_defaults_match_nncf():
    c = WeightCompressionConfig()
    assert c.mode is CompressWeightsMode.INT8_ASYM
    assert c.group_size is None and c.effective_group_size == -1
    assert c.ratio == 1.0 and c.backup_mode is None and c.effective_backup_mode is BackupMode.INT8_ASYM
    assert c.sensitivity_metric is None and c.effective_sensitivity_metric is SensitivityMetric.WEIGHT_QUANTIZATION_ERROR
    assert not (c.all_layers or c.awq or c.scale_estimation or c.gptq or c.lora_correction)
    assert c.subset_size == 128 and c.group_size_fallback is GroupSizeFallback.ADJUST
    assert WeightCompressionConfig(mode="int4_sym").effective_group_size == 128


def test_strings_become_enums_and_equality_is_truthful():
    a = WeightCompressionConfig(mode="INT4_ASYM", group_size=64, ratio=0.9, backup_mode="int8_sym")
    b = WeightCompressionConfig(mode=CompressWeightsMode.INT4_ASYM, group_size=64, ratio=0.9, backup_mode=BackupMode.INT8_SYM)
    assert a == b and repr(a) == repr(b)
    assert a != WeightCompressionConfig(mode="int4_asym", group_size=64, ratio=0.8)
    assert "int4_asym" in repr(a) or "INT4_ASYM" in repr(a)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(mode="int5"), ["mode='int5'", "int4_asym", "nvfp4", "adaptive_codebook"]),
        (dict(mode="mxfp4", group_size=64), ["group_size=64", "mxfp4", "groups of 32"]),
        (dict(mode="mxfp8_e4m3", group_size=-1), ["group_size=-1", "groups of 32"]),
        (dict(mode="nvfp4", group_size=32), ["group_size=32", "nvfp4", "groups of 16"]),
        (dict(mode="fp4", awq=True, dataset="x"), ["awq=True", "mode=fp4", "nf4"]),
        (dict(mode="mxfp4", scale_estimation=True, dataset="x"), ["scale_estimation=True", "mode=mxfp4"]),
        (dict(mode="nvfp4", gptq=True, dataset="x"), ["gptq=True", "mode=nvfp4"]),
        (dict(mode="fp8_e4m3", lora_correction=True, dataset="x"), ["lora_correction=True", "mode=fp8_e4m3"]),
        (dict(mode="codebook"), ["mode=codebook needs codebook=", "cb4"]),
        (dict(mode="nf4", codebook=[0, 1]), ["codebook=... is not used by mode=nf4", "mode='codebook'"]),
        (dict(mode="codebook", codebook=[1, 0, 2]), ["sorted ascending"]),
        (dict(mode="codebook", codebook=[1, 1, 2]), ["distinct"]),
        (dict(mode="codebook", codebook=[1]), ["at least two"]),
        (dict(mode="codebook", codebook=list(range(300))), ["300 entries", "256"]),
        (dict(mode="codebook", codebook=["a", "b"]), ["sorted 1-D list of numbers"]),
        (dict(mode="int8_sym", backup_mode="int8_asym"), ["backup_mode=int8_asym", "int8_sym"]),
        (dict(mode="int4_asym", ratio=1.5), ["ratio=1.5", "[0, 1]"]),
        (dict(mode="int4_asym", ratio=-0.1), ["ratio=-0.1"]),
        (dict(mode="int4_asym", group_size=0), ["group_size=0", "-1"]),
        (dict(mode="int4_asym", group_size=-2), ["group_size=-2"]),
        (dict(mode="int8_asym", group_size=64), ["group_size=64", "int8_asym", "group_size=-1"]),
        (dict(mode="int8_sym", ratio=0.5), ["ratio=0.5", "int8_sym", "ratio=1.0"]),
        (dict(mode="int8_asym", all_layers=True), ["all_layers=True", "int8_asym"]),
        (dict(mode="int8_asym", sensitivity_metric="weight_quantization_error"), ["sensitivity_metric", "int8_asym"]),
        (dict(mode="int8_asym", awq=True, dataset="wikitext2"), ["awq=True", "int8_asym"]),
        (dict(mode="int4_asym", awq=True), ["awq=True", "dataset="]),
        (dict(mode="int4_asym", gptq=True), ["gptq=True", "dataset="]),
        (dict(mode="int4_asym", scale_estimation=True), ["scale_estimation=True", "dataset="]),
        (dict(mode="int4_asym", lora_correction=True), ["lora_correction=True", "dataset="]),
        (dict(mode="int4_asym", sensitivity_metric="hessian_input_activation"), ["hessian_input_activation", "dataset="]),
        (dict(mode="int4_asym", gptq=True, lora_correction=True, dataset="x"), ["gptq=True", "lora_correction=True"]),
        (dict(mode="int4_asym", backup_mode="int4_sym"), ["backup_mode='int4_sym'", "none"]),
        (dict(mode="int4_asym", group_size_fallback="shrink"), ["group_size_fallback='shrink'", "adjust"]),
        (dict(mode="int4_asym", subset_size=0), ["subset_size=0"]),
        (dict(mode="int4_asym", all_layers="yes"), ["all_layers='yes'"]),
    ],
)
def test_validation_names_field_value_and_fix(kwargs, words):
    with pytest.raises(ConfigError) as info:
        WeightCompressionConfig(**kwargs)
    assert isinstance(info.value, OptimumWCError) and isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("mode, group_size, backup", [
    ("int8_asym", -1, "int8_asym"), ("int4_sym", 128, "int8_asym"), ("int3_sym", 128, "int8_asym"),
    ("int2_sym", 128, "int8_asym"), ("nf4", 128, "int8_asym"), ("fp4", 128, "fp8_e4m3"), ("fp8_e4m3", 128, "fp8_e4m3"),
    ("mxfp4", 32, "mxfp8_e4m3"), ("mxfp8_e4m3", 32, "mxfp8_e4m3"), ("nvfp4", 16, "int8_asym"), ("cb4", -1, "int8_asym"),
])
def test_mode_defaults_match_nncf(mode, group_size, backup):
    c = WeightCompressionConfig(mode=mode)
    assert (c.effective_group_size, c.effective_backup_mode.value) == (group_size, backup)
    assert c.backup_mode is None and c.group_size is None


def test_data_aware_algorithms_per_mode():
    """NNCF's rule: none for the FP / MX / NVFP4 formats; all four for integers, NF4 and codebooks."""
    refused = {m.value for m in CompressWeightsMode if not m.is_int8 and not m.allows_data_aware}
    assert refused == {"fp4", "fp8_e4m3", "mxfp4", "mxfp8_e4m3", "nvfp4"}
    for mode in ("int3_sym", "int2_sym", "nf4", "cb4"):
        c = WeightCompressionConfig(mode=mode, awq=True, scale_estimation=True, dataset="x")
        assert c.data_aware_algorithms == ("awq", "scale_estimation")
    WeightCompressionConfig(mode="codebook", codebook=[-1, 0, 1], gptq=True, dataset="x")


def test_codebook_round_trips_through_json(tmp_path):
    c = WeightCompressionConfig(mode="codebook", codebook=np.array([-1.5, -0.25, 0, 0.5, 2], dtype=np.float32))
    assert c.codebook == (-1.5, -0.25, 0.0, 0.5, 2.0)
    assert WeightCompressionConfig.from_dict(json.loads(c.to_json())) == c


def test_json_round_trip():
    c = WeightCompressionConfig(
        mode="int4_sym", group_size=32, ratio=0.75, backup_mode="none", all_layers=True,
        ignored_scope=IgnoredScope(names=["a"], patterns=[".*lm_head.*"], types=["Gather"]),
        group_size_fallback="ignore",
    )
    text = json.dumps(c.to_dict())
    assert WeightCompressionConfig.from_dict(json.loads(text)) == c


def test_unknown_key_in_from_dict_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['bitz'\]"):
        WeightCompressionConfig.from_dict({"mode": "int4_asym", "bitz": 4})


def test_data_aware_fields_exist_and_round_trip():
    c = WeightCompressionConfig(mode="int4_asym", awq=True, scale_estimation=True, dataset="wikitext2", subset_size=64)
    assert WeightCompressionConfig.from_dict(c.to_dict()) == c
    assert c.data_aware_algorithms == ("awq", "scale_estimation") and c.needs_data and not c.sensitivity_needs_data
    mixed = WeightCompressionConfig(mode="int4_asym", ratio=0.8, sensitivity_metric="max_activation_variance", dataset="x")
    assert mixed.data_aware_algorithms == () and mixed.sensitivity_needs_data and mixed.needs_data
    assert not WeightCompressionConfig(mode="int4_asym", ratio=0.8).needs_data
    # a dataset object is never written into the config file
    assert WeightCompressionConfig(mode="int4_asym", awq=True, dataset=["some text"]).to_dict()["dataset"] is None


@pytest.mark.parametrize("dtype, sym, mode", [
    ("nf4", False, "nf4"), ("mxfp4", False, "mxfp4"), ("cb4", False, "cb4"), ("int4", True, "int4_sym"),
    ("int8", False, "int8_asym"), ("fp8", False, "fp8_e4m3"), ("nvfp4", False, "nvfp4"),
])
def test_from_optimum_weight_formats(dtype, sym, mode):
    bits = 8 if dtype in ("int8", "fp8") else 4
    c = WeightCompressionConfig.from_optimum({"bits": bits, "sym": sym, "dtype": dtype, "group_size": None})
    assert c.mode.value == mode and c.group_size is None


def test_from_optimum_config_and_dict():
    from optimum.intel import OVWeightQuantizationConfig

    ours = WeightCompressionConfig.from_optimum(OVWeightQuantizationConfig(bits=4, sym=True, group_size=64, ratio=0.8))
    assert ours == WeightCompressionConfig(mode="int4_sym", group_size=64, ratio=0.8)
    assert WeightCompressionConfig.from_optimum({"bits": 8, "sym": False}) == WeightCompressionConfig()
    assert WeightCompressionConfig.coerce({"bits": 4, "group_size": 128, "ratio": 1.0, "all_layers": True}) == (
        WeightCompressionConfig(mode="int4_asym", group_size=128, all_layers=True)
    )
    awq = WeightCompressionConfig.from_optimum({"bits": 4, "quant_method": "awq", "dataset": "wikitext2", "num_samples": 32,
                                                "backup_precision": "int8_sym"})
    assert awq.awq and awq.subset_size == 32 and awq.backup_mode is BackupMode.INT8_SYM
    with pytest.raises(ConfigError, match="bits=3"):
        WeightCompressionConfig.from_optimum({"bits": 3})
    with pytest.raises(ConfigError, match="no equivalent"):
        WeightCompressionConfig.from_optimum({"bits": 4, "fancy": 1})


def test_ignored_scope_from_dict_rejects_unknown_keys():
    assert WeightCompressionConfig(mode="int4_asym", ignored_scope={"names": ["x"]}).ignored_scope == IgnoredScope(names=("x",))
    with pytest.raises(ConfigError, match="unknown keys"):
        WeightCompressionConfig(mode="int4_asym", ignored_scope={"name": ["x"]})
