"""The command line: `optimum-wc` (and `python -m optimum_wc`) and `optimum-cli export openvino-wc`, end to end.

Every command runs in a subprocess on the tiny model, offline; exit codes:
0 success, 2 usage errors, 1 other failures, with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optimum_wc import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEAVY = ("openvino", "torch", "transformers", "optimum.intel", "optimum.exporters", "numpy")


def run(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def wc(*args) -> subprocess.CompletedProcess:
    return run(BIN / "optimum-wc", *args)


def module(*args) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "optimum_wc", *args)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The stderr of a failed command: one error line (after progress lines "[  1.2s] ..." if any), no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not re.match(r"\[ *\d+\.\ds\] ", line)]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli_int4(llama_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli") / "int4"
    result = wc("export", llama_dir, out, "--weight-format", "int4", "--group-size", "32", "--ratio", "0.8",
                "--ignored-scope", "pattern:.*layers\\.1\\.mlp\\.down_proj.*")
    return out, result


# -- end to end -------------------------------------------------------------------


def test_export_end_to_end(cli_int4, llama_dir, read_ir):
    from optimum_wc.ir.rt_info import read_rt_info

    out, result = cli_int4
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Bit-width distribution" in result.stdout and "int4_asym, group size 32" in result.stdout
    assert f"Saved to {out}" in result.stdout
    assert "Traceback" not in result.stderr
    report = json.loads((out / "compression_report.json").read_text())
    config, layers = read_rt_info(read_ir(out / "openvino_model.xml"))
    assert config == report["config"] and config["mode"] == "int4_asym" and config["ratio"] == 0.8
    assert config["ignored_scope"]["patterns"] == [".*layers\\.1\\.mlp\\.down_proj.*"]
    assert [r["mode"] for r in layers if "layers.1.mlp.down_proj" in r["name"]] == ["float"]  # ignored: kept float
    assert {r["mode"] for r in layers} == {"int4_asym", "int8_asym", "float"}
    assert json.loads((out / "optimum_wc_config.json").read_text())["group_size"] == 32
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_optimum_cli_plugin_exports(llama_dir, tmp_path, read_ir):
    from optimum_wc.ir.rt_info import read_rt_info

    out = tmp_path / "int4-sym"
    # optimum-cli's own form: -m MODEL, flags, output last; the task is inferred for a local folder
    result = run(BIN / "optimum-cli", "export", "openvino-wc", "-m", llama_dir, "--weight-format", "int4", "--sym",
                 "--group-size", "64", "--backup-precision", "none", "--all-layers", "--quiet", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int4_sym, group size 64" in result.stdout
    config, layers = read_rt_info(read_ir(out / "openvino_model.xml"))
    assert config["mode"] == "int4_sym" and config["all_layers"] is True and config["backup_mode"] == "none"
    assert {r["mode"] for r in layers} == {"int4_sym"}
    assert result.stderr.strip() == ""  # --quiet


def test_optimum_cli_lists_the_command():
    result = run(BIN / "optimum-cli", "export", "--help")
    assert result.returncode == 0 and "openvino-wc" in result.stdout
    result = run(BIN / "optimum-cli", "export", "openvino-wc", "--help")
    assert result.returncode == 0
    for flag in ("--weight-format", "--sym", "--group-size", "--group-size-fallback", "--ratio", "--backup-precision",
                 "--all-layers", "--sensitivity-metric", "--dataset", "--num-samples", "--awq", "--scale-estimation",
                 "--gptq", "--lora-correction", "--lora-rank", "--sample-length", "--ignored-scope", "--trust-remote-code", "--task", "--mode"):
        assert flag in result.stdout, flag


def test_compress_eval_and_report(cli_int4, llama_ir, tmp_path, read_ir):
    from optimum_wc.ir.rt_info import read_rt_info

    float_dir = llama_ir.parent
    out = tmp_path / "int8"
    result = module("compress", float_dir, out, "--weight-format", "int8", "--sym")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int8_sym, per-channel" in result.stdout
    config, layers = read_rt_info(read_ir(out / "openvino_model.xml"))
    assert config["mode"] == "int8_sym" and {r["mode"] for r in layers} == {"int8_sym"}
    assert {p.name for p in float_dir.iterdir()} - {p.name for p in out.iterdir()} == set()  # other files copied
    assert json.loads((out / "compression_report.json").read_text())["source"] == "compress"

    # compressing it again is refused: it is no float IR any more
    again = module("compress", out, tmp_path / "again")
    assert again.returncode == 1 and "already compressed" in error_line(again)

    # eval against the float reference, on a user text
    int4 = cli_int4[0]
    text = tmp_path / "eval.txt"
    text.write_text((ROOT / "optimum_wc" / "data" / "pride_and_prejudice_ch1-4.txt").read_text()[:8000])
    results = tmp_path / "eval.json"
    result = wc("eval", int4, "--reference", float_dir, "--text", text, "--tokens", "600", "--window", "128",
                "--max-new-tokens", "8", "--json", results)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "perplexity" in result.stdout and "Q: What is the capital of France?" in result.stdout
    data = json.loads(results.read_text())
    model, ref = data["models"]["model"], data["models"]["reference"]
    assert model["n_windows"] == 4 and model["n_predicted"] == 4 * 127
    assert 0.5 < model["top1_agreement"] < 1.0 and model["kl_divergence"] > 0
    assert ref["top1_agreement"] == 1.0 and ref["kl_divergence"] == pytest.approx(0, abs=1e-9)
    assert model["perplexity"] > 1 and ref["perplexity"] > 1 and model["tokens_per_s"] > 0
    assert model["size_bytes"] < ref["size_bytes"]

    # report: read back from the IR, agreeing with the export's compression_report.json
    result = wc("report", int4)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((int4 / "compression_report.json").read_text())
    for layer in saved["layers"]:
        assert layer["name"] in result.stdout
    assert "Bit-width distribution" in result.stdout and "group size 32" in result.stdout
    as_json = json.loads(wc("report", int4, "--json").stdout)
    assert as_json["layers"] == saved["layers"] and as_json["totals"] == saved["totals"]


def test_demo_on_the_tiny_model(llama_dir, tmp_path, capsys):
    """The demo's flow and table (in-process): float, INT4 and INT4 + AWQ + SE on self-generated calibration text."""
    from optimum_wc.cli import main

    logger = logging.getLogger("optimum_wc")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    environ = dict(os.environ)  # the CLI turns third-party progress bars and chatter off through the environment
    try:
        code = main(["demo", str(tmp_path / "demo"), "--model", str(llama_dir), "--tokens", "300",
                     "--max-new-tokens", "6", "--num-samples", "4", "--quiet"])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
        os.environ.clear()
        os.environ.update(environ)
        from transformers.utils import logging as tlog

        tlog.enable_progress_bar()
    out = capsys.readouterr().out
    assert code == 0
    table = out.split("Q: ")[0]
    rows = {line.split("  ")[0].strip(): line for line in table.splitlines() if line.startswith(("float ", "INT4 "))}
    figures = lambda name: rows[name][len(name):].split()  # noqa: E731 - the columns after the name
    assert len(figures("INT4 + AWQ + SE")) == len(figures("INT4")) == 5  # a full row of figures
    aware = json.loads((tmp_path / "demo" / "int4-awq-se" / "compression_report.json").read_text())
    assert aware["config"]["awq"] and aware["config"]["scale_estimation"] and aware["config"]["dataset"] == "auto"
    assert "100.0" in rows["float"]  # top-1 agreement of the reference with itself
    assert "Q: What is the capital of France?" in out
    assert (tmp_path / "demo" / "float" / "compression_report.json").is_file()
    assert (tmp_path / "demo" / "int4" / "openvino_model.xml").is_file()


def test_examples_evaluate(cli_int4, llama_ir):
    # (without --reference it first exports the float original named in compression_report.json)
    result = run(sys.executable, ROOT / "examples" / "evaluate.py", cli_int4[0], "--reference", llama_ir.parent,
                 "--tokens", "300", "--window", "128")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("float ", "compressed "))}
    assert set(lines) == {"float", "compressed"} and "100.0" in lines["float"]


# -- errors and exit codes ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["export", "m", "o", "--bogus"], "unrecognized arguments: --bogus"),
        (["export", "m", "o", "--weight-format", "int5"], "invalid choice: 'int5'"),
        (["export", "m", "o", "--weight-format", "int4", "--ratio", "1.7"], "ratio=1.7 must be a number in [0, 1]"),
        (["export", "m", "o", "--weight-format", "int4", "--group-size", "0"], "group_size=0 is not allowed"),
        (["export", "m", "o", "--weight-format", "int8", "--group-size", "64"], "not allowed with mode=int8_asym"),
        (["export", "m", "o", "--weight-format", "int4", "--awq"], "awq=True needs calibration data"),
        (["export", "m", "o", "--weight-format", "int8", "--mode", "int4_sym"], "contradicts --weight-format int8"),
        (["export", "m", "o", "--weight-format", "fp32", "--ratio", "0.5"], "keeps the weights float"),
        (["export", "m", "o", "--task", "image-classification"], "--task image-classification is not supported"),
        (["export", "o"], "no model given"),
        (["compress", "a", "b", "--ignored-scope", "{not json"], "not valid JSON"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args, fragment):
    result = module(*args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    line = error_line(result)
    assert fragment in line and line.startswith("optimum-wc")


def test_optimum_cli_usage_error_exit_2(llama_dir, tmp_path):
    result = run(BIN / "optimum-cli", "export", "openvino-wc", "-m", llama_dir, "--weight-format", "int4",
                 "--ratio", "1.7", tmp_path / "o")
    assert result.returncode == 2
    assert error_line(result) == "optimum-cli export openvino-wc: error: ratio=1.7 must be a number in [0, 1], e.g. ratio=0.8."
    assert not (tmp_path / "o").exists()


def test_missing_model_exit_1(tmp_path):
    result = wc("export", tmp_path / "no-such-model", tmp_path / "out", "--weight-format", "int4")
    assert result.returncode == 1
    line = error_line(result)
    assert "no-such-model" in line and "not found" in line and "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "out").exists()


def test_unreadable_checkpoint_exit_1(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    result = module("export", tmp_path / "bad", tmp_path / "out")
    assert result.returncode == 1 and "cannot read" in error_line(result)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_exit_1(llama_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = wc("export", llama_dir, blocker / "out", "--weight-format", "int4")
    assert result.returncode == 1
    assert "cannot write the output folder" in error_line(result)
    result = wc("export", llama_dir, blocker, "--weight-format", "int4")
    assert result.returncode == 1 and "is not a folder" in error_line(result)


def test_other_commands_fail_with_exit_1(tmp_path, llama_dir):
    for args, fragment in (
        (["export", "m", "o", "--weight-format", "int4", "--awq", "--dataset", tmp_path / "calib.txt"], "no such file"),
        (["eval", tmp_path / "missing"], "not found"),
        (["report", tmp_path], "holds no openvino_model.xml"),
        (["compress", llama_dir, tmp_path / "o"], "use `optimum-wc export`"),
        (["eval", tmp_path, "--text", tmp_path / "missing.txt"], "holds no openvino_model.xml"),
    ):
        result = module(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert fragment in error_line(result), args


def test_verbose_shows_the_traceback(tmp_path):
    result = module("report", tmp_path, "--verbose")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("optimum-wc: error:")


# -- fast help, options ----------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["export", "--help"], ["compress", "--help"], ["eval", "--help"],
                                  ["report", "--help"], ["demo", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = (
        "import sys\n"
        "from optimum_wc.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY=", result.stdout[-500:]
    assert "usage:" in result.stdout


def test_entry_points_answer_help():
    for result in (wc("--help"), module("--help")):
        assert result.returncode == 0 and "export" in result.stdout and "demo" in result.stdout


def test_optimum_cli_register_module_is_light():
    code = (
        "import sys, importlib\n"
        "m = importlib.import_module('optimum.commands.register.register_openvino_wc')\n"
        "assert m.REGISTER_COMMANDS[0][0].COMMAND.name == 'openvino-wc'\n"
        f"print('HEAVY=' + ','.join(x for x in {HEAVY!r} if x in sys.modules))\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="


def _args(*argv: str) -> argparse.Namespace:
    from optimum_wc.cli import build_parser

    return build_parser().parse_args(["export", "model", "out", *argv])


@pytest.mark.parametrize("argv, mode, group_size", [
    (("--weight-format", "nf4"), "nf4", 128),
    (("--weight-format", "mxfp4"), "mxfp4", 32),
    (("--weight-format", "cb4"), "cb4", -1),
    (("--weight-format", "fp8"), "fp8_e4m3", 128),
    (("--weight-format", "f8e4m3", "--group-size", "64"), "fp8_e4m3", 64),
    (("--weight-format", "mxfp8"), "mxfp8_e4m3", 32),
    (("--weight-format", "nvfp4"), "nvfp4", 16),
    (("--weight-format", "int3"), "int3_sym", 128),
    (("--weight-format", "INT2"), "int2_sym", 128),
    (("--weight-format", "fp4", "--ratio", "0.8"), "fp4", 128),
    (("--mode", "mxfp8_e4m3"), "mxfp8_e4m3", 32),
    (("--weight-format", "nf4", "--mode", "nf4"), "nf4", 128),
])
def test_every_weight_format_spelling(argv, mode, group_size):
    from optimum_wc.cli.options import config_from_args

    c = config_from_args(_args(*argv))
    assert (c.mode.value, c.effective_group_size) == (mode, group_size)


def test_codebook_from_a_file(tmp_path):
    from optimum_wc.cli.options import UsageError, config_from_args

    for name, text in (("cb.json", "[-2, -0.5, 0, 0.5, 2]"), ("cb.txt", "-2 -0.5\n0, 0.5\n2\n")):
        (tmp_path / name).write_text(text)
        c = config_from_args(_args("--weight-format", "codebook", "--codebook", str(tmp_path / name)))
        assert c.mode.value == "codebook" and c.codebook == (-2.0, -0.5, 0.0, 0.5, 2.0)
    np.save(tmp_path / "cb.npy", np.array([-1, 0, 1], dtype=np.float32))
    assert config_from_args(_args("--weight-format", "codebook", "--codebook", str(tmp_path / "cb.npy"))).codebook == (-1, 0, 1)
    with pytest.raises(UsageError, match="no such file"):
        config_from_args(_args("--weight-format", "codebook", "--codebook", str(tmp_path / "nope.json")))
    (tmp_path / "bad.txt").write_text("one two")
    with pytest.raises(UsageError, match="not a list of numbers"):
        config_from_args(_args("--weight-format", "codebook", "--codebook", str(tmp_path / "bad.txt")))


@pytest.mark.parametrize("argv, fragment", [
    (("--weight-format", "nf4", "--sym"), "--sym applies to integer formats"),
    (("--mode", "mxfp4", "--sym"), "--sym applies to integer formats"),
    (("--weight-format", "nf4", "--mode", "cb4"), "contradicts --weight-format nf4"),
    (("--weight-format", "mxfp4", "--awq", "--dataset", "auto"), "awq=True is not available with mode=mxfp4"),
    (("--weight-format", "codebook",), "mode=codebook needs codebook="),
])
def test_format_usage_errors(argv, fragment):
    from optimum_wc.cli.options import config_from_args
    from optimum_wc.errors import OptimumWCError

    with pytest.raises(OptimumWCError, match=re.escape(fragment)):
        config_from_args(_args(*argv))


def test_flags_map_to_the_config():
    from optimum_wc.cli.options import config_from_args

    assert config_from_args(_args("--weight-format", "fp32")) is None
    assert config_from_args(_args()).mode.value == "int8_asym"  # no format: int8, as optimum-cli for big models
    c = config_from_args(_args("--weight-format", "int4"))
    assert (c.mode.value, c.effective_group_size, c.ratio) == ("int4_asym", 128, 1.0)  # optimum-cli's int4 defaults
    c = config_from_args(_args("--weight-format", "int4", "--sym", "--group-size", "64", "--ratio", "0.8",
                               "--backup-precision", "int8_sym", "--group-size-fallback", "ignore", "--all-layers",
                               "--sensitivity-metric", "weight_quantization_error",
                               "--ignored-scope", "lm_head", "--ignored-scope", "type:Gather",
                               "--ignored-scope", '{"patterns": [".*q_proj.*"]}'))
    assert c.mode.value == "int4_sym" and c.group_size == 64 and c.ratio == 0.8
    assert c.backup_mode.value == "int8_sym" and c.group_size_fallback.value == "ignore" and c.all_layers
    assert c.ignored_scope.names == ("lm_head",) and c.ignored_scope.types == ("Gather",)
    assert c.ignored_scope.patterns == (".*q_proj.*",)
    c = config_from_args(_args("--mode", "int4_sym", "--awq", "--scale-estimation", "--dataset", "auto", "--num-samples", "16"))
    assert c.awq and c.scale_estimation and c.dataset == "auto" and c.subset_size == 16
    c = config_from_args(_args("--weight-format", "int4", "--lora-correction", "--lora-rank", "16", "--dataset", "auto",
                               "--sample-length", "64"))
    assert c.lora_correction and c.lora_rank == 16 and c.sample_length == 64
    with pytest.raises(ConfigError):
        config_from_args(_args("--weight-format", "int4", "--lora-correction", "--lora-rank", "0", "--dataset", "auto"))
    with pytest.raises(ConfigError):
        config_from_args(_args("--weight-format", "int4", "--ratio", "1.7"))


def test_evaluation_text_sources(tmp_path):
    import numpy as np

    from optimum_wc import OptimumWCError
    from optimum_wc.evaluation import load_dataset_text, load_text, sample_text, split_windows

    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "b.txt").write_text("second")
    (tmp_path / "texts" / "a.txt").write_text("first\n")
    assert load_text(tmp_path / "texts") == "first\n\nsecond"
    with pytest.raises(OptimumWCError, match="not found"):
        load_text(tmp_path / "missing.txt")
    assert "truth universally acknowledged" in sample_text()

    import datasets

    datasets.Dataset.from_dict({"text": ["one", "", "two"], "n": [1, 2, 3]}).save_to_disk(str(tmp_path / "ds"))
    assert load_dataset_text(str(tmp_path / "ds")) == "one\n\ntwo"
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n{"body": "y"}\n')
    assert load_dataset_text(str(tmp_path / "d.jsonl"), column="body") == "x\n\ny"
    with pytest.raises(OptimumWCError, match="no column 'text'"):
        load_dataset_text(str(tmp_path / "d.jsonl"))

    assert split_windows(np.arange(1100), 512).shape == (2, 512)  # the tail is dropped
    assert split_windows(np.arange(100), 512).shape == (1, 100)  # shorter than a window: one window
