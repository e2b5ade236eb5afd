"""Ctrl-C and SIGTERM at each stage of an export (issue 17), delivered at a known moment.

The command line runs in this process (``optimum_wc.cli.main``, its signal
handlers installed as for a user) and the signal is sent to this process from
inside the stage: while statistics are collected (the second calibration
batch), while layers are compressed (the second layer put in the graph when
data-aware, the sixth constant written to the .bin when streamed data-free), and once the IR is saved in the staging folder (before
the rename that publishes it). Each must print one line, exit 130 / 143 and
leave nothing beside the target. The float export stage is covered with a
real process in test_reliability.
"""

from __future__ import annotations

import os
import signal

import pytest

from optimum_wc import cli
from optimum_wc.calibration.runners import StatisticsRunner
from optimum_wc.engine import compress as engine_compress
from optimum_wc.engine import streaming as engine_streaming
from optimum_wc.export import pipeline

SIGNALS = [(signal.SIGINT, 130, "optimum-wc: interrupted"), (signal.SIGTERM, 143, "optimum-wc: terminated (SIGTERM)")]
DATA_AWARE = ("--weight-format", "int4", "--group-size", "16", "--scale-estimation", "--num-samples", "4")
DATA_FREE = ("--weight-format", "int4", "--group-size", "16")


def signal_on_call(monkeypatch, owner, name: str, signum: int, nth: int = 2) -> list[int]:
    """Make the ``nth`` call of ``owner.name`` send ``signum`` to this process, then go on as before."""
    original, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return calls


@pytest.fixture()
def calib_text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(16)))
    return path


def run_export(model, target, *options) -> int:
    return cli.main(["-q", "export", str(model), str(target), *map(str, options)])


def assert_stopped(code: int, expected: int, line: str, capsys, folder) -> None:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == expected, err
    assert lines[-1] == line and sum("optimum-wc:" in x for x in lines) == 1, err
    assert sorted(p.name for p in folder.iterdir()) == ["calib.txt"], "the staging folder, target or lock survived"


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_while_collecting_statistics(llama_dir, tmp_path, calib_text, monkeypatch, capsys, signum, code, line):
    calls = signal_on_call(monkeypatch, StatisticsRunner, "run", signum)
    got = run_export(llama_dir, tmp_path / "out", *DATA_AWARE, "--dataset", calib_text)
    assert len(calls) == 2  # stopped at the batch that received the signal: no further batch ran
    assert_stopped(got, code, line, capsys, tmp_path)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_while_compressing_data_aware(llama_dir, tmp_path, calib_text, monkeypatch, capsys, signum, code, line):
    calls = signal_on_call(monkeypatch, engine_compress._GraphWriter, "__call__", signum)
    got = run_export(llama_dir, tmp_path / "out", *DATA_AWARE, "--dataset", calib_text)
    assert len(calls) == 2
    assert_stopped(got, code, line, capsys, tmp_path)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_while_writing_streamed_layers(llama_dir, tmp_path, calib_text, monkeypatch, capsys, signum, code, line):
    calls = signal_on_call(monkeypatch, engine_streaming.OrderedBinWriter, "write", signum, nth=6)
    got = run_export(llama_dir, tmp_path / "out", *DATA_FREE)
    assert len(calls) == 6
    assert_stopped(got, code, line, capsys, tmp_path)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_signal_after_the_save_before_the_publish(llama_dir, tmp_path, calib_text, monkeypatch, capsys, signum, code, line):
    calls = signal_on_call(monkeypatch, pipeline, "write_report", signum, nth=1)
    got = run_export(llama_dir, tmp_path / "out", *DATA_FREE)
    assert len(calls) == 1
    assert_stopped(got, code, line, capsys, tmp_path)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_an_interrupt_a_library_turned_into_its_own_error_still_stops(tmp_path, monkeypatch, capsys, signum, code, line):
    """OpenVINO's converter catches the interrupt raised in our handler and raises its own error instead
    (seen in CI: "OpConversionFailure ... Terminated"); the run must still end as stopped, not as failed."""

    def export_folder(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
        except BaseException as exc:  # noqa: BLE001 - as the converter does
            raise RuntimeError(f"Model wasn't fully converted: {exc!r}") from None

    monkeypatch.setattr(pipeline, "export_folder", export_folder)
    monkeypatch.setattr("optimum_wc.export.float_ir.check_model_source", lambda *a, **k: None)
    (tmp_path / "calib.txt").touch()
    assert_stopped(run_export(tmp_path / "model", tmp_path / "out"), code, line, capsys, tmp_path)
