"""Fuzzing the detection of pre-quantized checkpoints: any ``quantization_config`` gives a format, None or our error.

Property-based (hypothesis, derandomized).  ``config.json`` (and sometimes
a ``quantize_config.json`` beside it) holds a ``quantization_config`` that
starts as a valid one of each method optimum-wc reads (GPTQ, AWQ,
AutoRound, compressed-tensors, bitsandbytes, MXFP4) and gets odd values:
NaN/Infinity (Python's JSON reads them), wrong types, strings for lists,
unknown strategies, regexes that do not compile.
:func:`detect_prequantized` returns a format, None (not a format it reads)
or an :class:`~optimum_wc.errors.ExportError` naming the config file; a
format's per-layer look-ups (:meth:`for_layer`, :meth:`group_of`) and its
record (:meth:`to_dict`) then work.  ``tests/test_fuzz_config.py`` fuzzes
optimum-wc's own compression config; this is the checkpoint's.
"""

from __future__ import annotations

import json

import pytest
from fuzz_arrays import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from optimum_wc.checkpoints.formats import detect_prequantized
from optimum_wc.checkpoints.settings import PrequantizedFormat
from optimum_wc.errors import ExportError, OptimumWCError

LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head")
CT_WEIGHTS = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32,
              "actorder": None, "dynamic": False}
VALID = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
             "checkpoint_format": "gptq", "dynamic": {"-:.*down_proj": {}, r"+:.*q_proj": {"bits": 8}},
             "meta": {"quantizer": ["gptqmodel:2.0"]}},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "auto-round": {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True,
                   "packing_format": "auto_round:auto_gptq", "extra_config": {"lm_head": {"bits": 16},
                                                                              ".*q_proj": {"bits": 8}}},
    "compressed-tensors": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                           "quantization_status": "compressed", "ignore": ["lm_head"],
                           "config_groups": {"group_0": {"targets": ["Linear"], "weights": CT_WEIGHTS},
                                             "group_1": {"targets": ["re:.*q_proj"], "format": "naive-quantized",
                                                         "weights": {**CT_WEIGHTS, "num_bits": 8}}}},
    "bitsandbytes": {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                     "bnb_4bit_quant_type": "nf4", "bnb_4bit_quant_storage": "uint8",
                     "llm_int8_skip_modules": ["lm_head"]},
    "mxfp4": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]},
}
WORDS = ["gptq", "gptq_v2", "marlin", "awq", "gemm", "gemv", "int", "float", "group", "channel", "tensor", "block",
         "tensor_group", "pack-quantized", "naive-quantized", "float-quantized", "nvfp4-pack-quantized", "nf4",
         "fp4", "uint8", "compressed", "frozen", "dense", "Linear", "re:.*proj", "re:(", "(", "-:(", "+:.*",
         "auto_round:auto_awq", "auto_round:gptqmodel", "lm_head"]
SCALARS = (st.none() | st.booleans() | st.sampled_from([0, -1, 1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 10**30])
           | st.sampled_from([float("nan"), float("inf"), -float("inf"), 4.0, 4.5, 1e300]) | st.sampled_from(WORDS)
           | st.text(max_size=4))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=3), inner, max_size=3), max_leaves=6)


def _paths(config: dict) -> list[tuple]:
    """Every key path of ``config``'s nested dicts (where an odd value can go)."""
    out = []
    for key, value in config.items():
        out.append((key,))
        if isinstance(value, dict):
            out.extend((key, *rest) for rest in _paths(value))
    return out


@st.composite
def configs(draw):
    """A valid quantization_config of one method with a few values replaced, added or removed."""
    config = json.loads(json.dumps(VALID[draw(st.sampled_from(sorted(VALID)))]))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(config) + [("new",)]))
        *parents, last = path
        where = config
        for key in parents:
            where = where[key]
        if draw(st.integers(0, 4)) == 0:
            where.pop(last, None)
        else:
            where[last if last != "new" else draw(st.sampled_from(WORDS))] = draw(SCALARS | VALUES)
    return config


def _detect(folder):
    try:
        return detect_prequantized(folder)
    except OptimumWCError as exc:
        assert isinstance(exc, ExportError) and ("config.json" in str(exc) or str(folder) in str(exc)), str(exc)
        return None


@FUZZ
@given(config=configs(), sidecar=st.one_of(st.none(), st.none(), st.none(), configs()))
def test_any_quantization_config_gives_a_format_none_or_our_error(tmp_path_factory, config, sidecar):
    folder = tmp_path_factory.mktemp("q")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": config}))
    if sidecar is not None:
        (folder / "quantize_config.json").write_text(json.dumps(sidecar))
    fmt = _detect(folder)
    if fmt is None:
        return
    assert isinstance(fmt, PrequantizedFormat)
    json.dumps(fmt.to_dict())  # recorded in the IR's rt_info and the report
    for prefix in LAYERS:
        layer = fmt.for_layer(prefix)
        assert layer is None or isinstance(layer.bits, int) and isinstance(layer.group_size, int)
        group = fmt.group_of(prefix)
        assert group is None or isinstance(group.bits, int) and isinstance(group.group_size, int)
    assert all(isinstance(name, str) for name in fmt.ignore)


def _config(method: str, path: tuple, value) -> dict:
    config = json.loads(json.dumps(VALID[method]))
    where = config
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return config


@pytest.mark.parametrize("method, path, value, match", [
    ("gptq", ("bits",), float("inf"), r"bits=inf is not an integer"),  # was OverflowError
    ("gptq", ("group_size",), float("nan"), r"group_size=nan is not an integer"),  # was ValueError
    ("gptq", ("dynamic",), {"+:.*": {"bits": float("inf")}}, r"\(override '\.\*'\): bits=inf is not an integer"),
    ("auto-round", ("extra_config", "lm_head"), [1], r"AutoRound extra_config\['lm_head'\] is not a JSON object"),
    ("auto-round", ("extra_config", "lm_head", "bits"), "x", r"\(extra_config 'lm_head'\): bits='x' is not an integer"),
    ("compressed-tensors", ("config_groups", "group_0", "targets"), ["re:("],
     r"config group 'group_0': target 're:\(' is not a regular expression"),  # was re.error when matching layers
    ("compressed-tensors", ("config_groups", "group_0", "targets"), 5, r"'targets' must be a list of module names"),
    ("compressed-tensors", ("config_groups", "group_0", "targets"), {"Linear": 1}, r"not \{'Linear': 1\}"),
    ("compressed-tensors", ("ignore",), 5, r"compressed-tensors 'ignore' must be a list of module names, not 5"),
    ("compressed-tensors", ("sparsity_config",), ["x"], r"sparsity_config is not a JSON object"),
    ("bitsandbytes", ("llm_int8_skip_modules",), 3, r"llm_int8_skip_modules must be a list of module names"),
    ("mxfp4", ("modules_to_not_convert",), [1], r"modules_to_not_convert must be a list of module names"),
])
def test_found_by_fuzzing_odd_quantization_configs_are_named(tmp_path, method, path, value, match):
    """Before: OverflowError/ValueError/TypeError/AttributeError out of the detection, re.error out of the layer
    look-up (the reader's check of each layer), and a dict of targets silently taken as its keys."""
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": _config(method, path, value)}))
    with pytest.raises(ExportError, match=rf"^{tmp_path / 'config.json'}.*{match}"):
        fmt = detect_prequantized(tmp_path)
        fmt.group_of(LAYERS[0])


@pytest.mark.parametrize("method, key", [("compressed-tensors", ("ignore",)),
                                         ("bitsandbytes", ("llm_int8_skip_modules",)),
                                         ("mxfp4", ("modules_to_not_convert",))])
def test_found_by_fuzzing_one_module_name_is_one_name(tmp_path, method, key):
    """Before: a string was split into its characters ('lm_head' -> 'l', 'm', '_', ...)."""
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": _config(method, key, "lm_head")}))
    assert detect_prequantized(tmp_path).ignore == ("lm_head",)
