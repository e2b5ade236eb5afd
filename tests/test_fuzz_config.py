"""Fuzzing the compression config and the CLI's flags: any input gives a valid config or our error, with a message.

Property-based (hypothesis, derandomized so CI never flakes): random dicts
for ``WeightCompressionConfig.from_dict``, random files for ``from_json``,
random argument lists for the parsers of ``export``/``compress``/``tune``
followed by ``config_from_args``.  The failure must be a
:class:`~optimum_wc.errors.ConfigError` (or, for the CLI, exit 2 / a
usage error), never a TypeError/KeyError/AttributeError from deep inside.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from optimum_wc import WeightCompressionConfig  # noqa: E402
from optimum_wc.errors import ConfigError, OptimumWCError  # noqa: E402

FAST = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
FIELDS = [f.name for f in dataclasses.fields(WeightCompressionConfig)]
WORDS = ["int4_sym", "int4_asym", "int8_asym", "int8_sym", "nf4", "e2m1", "mxfp4", "cb4_f8e4m3", "fp32",
         "hessian_input_activation", "weight_quantization_error", "auto", "wikitext2", "names", "patterns", "types"]
SCALARS = (st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=8)
           | st.sampled_from(WORDS))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5) | st.sampled_from(WORDS), inner, max_size=3), max_leaves=6)


def _config_or_our_error(make):
    try:
        return make()
    except ConfigError as exc:
        assert str(exc).strip(), "a ConfigError without a message"
        return None


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6))
def test_from_dict_gives_a_config_or_a_config_error(data):
    config = _config_or_our_error(lambda: WeightCompressionConfig.from_dict(data))
    if config is not None and isinstance(config.dataset, (str, type(None))):  # (data itself is never written)
        assert WeightCompressionConfig.from_dict(config.to_dict()) == config


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6) | st.integers(), VALUES, max_size=4)
       | VALUES)
def test_from_dict_of_anything(data):
    _config_or_our_error(lambda: WeightCompressionConfig.from_dict(data))


@pytest.mark.parametrize("data", [
    {"ignored_scope": {"names": 5}},  # was TypeError: 'int' object is not iterable
    {"ignored_scope": {"names": {"a": 1}}},  # a dict silently became its keys
    {1: 2, "x": 3},  # was TypeError: sorting int and str keys
    [("mode", "int4_sym")],  # was TypeError / AttributeError on a list
    "int4_sym",
])
def test_found_by_fuzzing_config(data):
    with pytest.raises(ConfigError, match="."):
        WeightCompressionConfig.from_dict(data)


@settings(FAST, max_examples=60)
@given(st.binary(max_size=64) | VALUES.map(lambda v: json.dumps(v).encode()))
def test_from_json_of_any_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "optimum_wc_config.json"
    path.write_bytes(raw)
    try:
        WeightCompressionConfig.from_json(path)
    except OptimumWCError as exc:
        assert str(exc).strip()


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b""])
def test_from_json_not_json_is_a_config_error(tmp_path, raw):
    path = tmp_path / "optimum_wc_config.json"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match="not a JSON compression config"):
        WeightCompressionConfig.from_json(path)


# -- the CLI's flags: a parse error exits 2 with a message; parsed flags give a config or our error

FLAGS = ["--weight-format", "--mode", "--sym", "--codebook", "--group-size", "--group-size-fallback", "--ratio",
         "--backup-precision", "--all-layers", "--sensitivity-metric", "--dataset", "--num-samples", "--awq",
         "--scale-estimation", "--gptq", "--gptq-act-order", "--gptq-asymmetric", "--mse-clipping", "--full-range",
         "--gptq-refine-rounds", "--lora-correction", "--lora-rank", "--sample-length", "--ignored-scope", "--task",
         "--trust-remote-code", "--mxfp4-experts", "--max-ppl-increase", "--max-size", "--data-free", "--jobs"]
TOKENS = st.sampled_from(FLAGS) | st.sampled_from(
    ["int4", "int8", "fp32", "nf4", "mxfp4", "int4_sym", "int4_asym", "cb4_f8e4m3", "-1", "0", "64", "128", "0.5",
     "1.5", "nan", "-3", "wikitext2", "auto", "./nowhere.txt", '{"names": 5}', '{"types": "MatMul"}', "[1]",
     "pattern:", "pattern:(", "name:x", "i8", "none", "int8_asym", "hessian_input_activation"]) | st.text(max_size=6)


@settings(FAST, max_examples=200)
@given(command=st.sampled_from(["export", "eval", "tune"]), tokens=st.lists(TOKENS, max_size=8))
def test_cli_flags_give_a_config_or_exit_2(capsys, command, tokens):
    from optimum_wc.cli import build_parser
    from optimum_wc.cli.options import config_from_args

    positional = {"export": ["-m", "model", "out"], "eval": ["model"], "tune": ["model", "out"]}[command]
    argv = [command, *positional, *tokens]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2 and "error:" in capsys.readouterr().err
        return
    if command != "export":
        return
    try:
        config_from_args(args)
    except OptimumWCError as exc:  # UsageError and ConfigError both exit 2 with this message
        assert str(exc).strip()


@pytest.mark.parametrize("spec", ['{"names": 5}', '{"patterns": null}', '{"types": {"a": 1}}'])
def test_found_by_fuzzing_ignored_scope_json_of_the_wrong_type(spec):
    """Before: TypeError ('int' object is not iterable) out of the flag parsing."""
    from optimum_wc.cli import build_parser
    from optimum_wc.cli.options import config_from_args

    args = build_parser().parse_args(["export", "-m", "model", "out", "--weight-format", "int4", "--ignored-scope",
                                      spec])
    with pytest.raises(OptimumWCError, match="ignored-scope .*must be a string or a list of strings"):
        config_from_args(args)
