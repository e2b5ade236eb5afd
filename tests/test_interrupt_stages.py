"""Ctrl-C and SIGTERM at each stage of an export (issue 17), delivered at a known moment.

Each case runs the command line in its own process, as a user does
(``optimum_wc.cli.main`` with its signal handlers), and that process sends
the signal to itself from inside the stage: while statistics are collected
(the second calibration batch), while a data-aware model's layers go into
the graph (the second layer), while a streamed data-free ``.bin`` is written
(the sixth constant), and once the IR is saved in the staging folder (before
the rename that publishes it). Each must print one line, exit 130 / 143 and
leave nothing beside the target. The float export stage is covered from
outside, with a timed signal, in test_reliability.

(Run inside the test process instead, these cases twice crashed the CI run
with a segmentation fault after some 800 other tests, at different cases, and
never alone: see docs/RELIABILITY.md.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIGNALS = [(signal.SIGINT, 130, "optimum-wc: interrupted"), (signal.SIGTERM, 143, "optimum-wc: terminated (SIGTERM)")]
DATA_AWARE = ("--weight-format", "int4", "--group-size", "16", "--scale-estimation", "--num-samples", "4")
DATA_FREE = ("--weight-format", "int4", "--group-size", "16")

# The child: wrap OWNER.NAME so that its NTH call sends SIGNUM to the process, then run the command line.
SIGNAL_ON_CALL = """
import importlib, os, sys
where, name, signum, nth = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
module, _, cls = where.partition(":")
owner = importlib.import_module(module)
owner = getattr(owner, cls) if cls else owner
original, calls = getattr(owner, name), []
def wrapped(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        os.kill(os.getpid(), signum)
    return original(*args, **kwargs)
setattr(owner, name, wrapped)
from optimum_wc.cli import main
code = main(sys.argv[5:])
print(f"calls={len(calls)}")
sys.exit(code)
"""

# The child: an export that a library interrupts, catching the interrupt and raising its own error instead.
LIBRARY_REWRAP = """
import os, sys
from optimum_wc.export import float_ir, pipeline
signum = int(sys.argv[1])
def export_folder(*args, **kwargs):
    try:
        os.kill(os.getpid(), signum)
    except BaseException as exc:  # as OpenVINO's converter does
        raise RuntimeError(f"Model wasn't fully converted: {exc!r}") from None
pipeline.export_folder = export_folder
float_ir.check_model_source = lambda *a, **k: None
from optimum_wc.cli import main
sys.exit(main(sys.argv[2:]))
"""


def child(code: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def signal_at(where: str, name: str, signum: int, nth: int, model, target, *options) -> subprocess.CompletedProcess:
    return child(SIGNAL_ON_CALL, where, name, int(signum), nth, "-q", "export", model, target, *options)


@pytest.fixture()
def calib_text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(16)))
    return path


def assert_stopped(proc: subprocess.CompletedProcess, expected: int, line: str, folder: Path,
                   calls: int | None = None) -> None:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == expected, proc.stderr[-3000:]
    assert lines[-1] == line and sum("optimum-wc:" in x for x in lines) == 1, proc.stderr[-3000:]
    if calls is not None:  # stopped at the call that received the signal: no later one ran
        assert f"calls={calls}" in proc.stdout, proc.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["calib.txt"], "the staging folder, target or lock survived"


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_while_collecting_statistics(llama_dir, tmp_path, calib_text, signum, code, line):
    proc = signal_at("optimum_wc.calibration.runners:StatisticsRunner", "run", signum, 2, llama_dir,
                     tmp_path / "out", *DATA_AWARE, "--dataset", calib_text)
    assert_stopped(proc, code, line, tmp_path, calls=2)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_while_compressing_data_aware(llama_dir, tmp_path, calib_text, signum, code, line):
    proc = signal_at("optimum_wc.engine.compress:_GraphWriter", "__call__", signum, 2, llama_dir, tmp_path / "out",
                     *DATA_AWARE, "--dataset", calib_text)
    assert_stopped(proc, code, line, tmp_path, calls=2)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_while_writing_streamed_layers(llama_dir, tmp_path, calib_text, signum, code, line):
    proc = signal_at("optimum_wc.ir.serialize:OrderedBinWriter", "write", signum, 6, llama_dir, tmp_path / "out",
                     *DATA_FREE)
    assert_stopped(proc, code, line, tmp_path, calls=6)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_after_the_save_before_the_publish(llama_dir, tmp_path, calib_text, signum, code, line):
    proc = signal_at("optimum_wc.export.pipeline", "write_report", signum, 1, llama_dir, tmp_path / "out", *DATA_FREE)
    assert_stopped(proc, code, line, tmp_path, calls=1)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_an_interrupt_a_library_turned_into_its_own_error_still_stops(tmp_path, calib_text, signum, code, line):
    """OpenVINO's converter catches the interrupt raised in our handler and raises its own error instead
    (seen in CI: "OpConversionFailure ... Terminated"); the run must still end as stopped, not as failed."""
    proc = child(LIBRARY_REWRAP, int(signum), "-q", "export", tmp_path / "model", tmp_path / "out")
    assert_stopped(proc, code, line, tmp_path)
