"""WeightCompressionConfig: defaults, coercion, validation messages, JSON and optimum-intel round trips."""

from __future__ import annotations

import json

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
    assert c.ratio == 1.0 and c.backup_mode is BackupMode.INT8_ASYM
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
        (dict(mode="int3"), ["mode='int3'", "int4_asym"]),
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
