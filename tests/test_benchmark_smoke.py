"""The benchmark runs end to end on a tiny random Llama and writes a well-formed table.

Offline (HF_HUB_OFFLINE=1), about half a minute; no timing is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.report import RESULTS_HEADER, parse_results_table  # noqa: E402
from conftest import CALIBRATION_TEXT  # noqa: E402

CONFIGS = ("int8_asym", "int4_asym_g128_r1.0")
ENGINES = ("nncf", "ours")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "B.md"
    cmd = [
        sys.executable, "-m", "benchmarks.run", "--smoke", "--configs", ",".join(CONFIGS),
        "--out", str(out), "--work-dir", str(tmp / "work"), "--eval-text", str(CALIBRATION_TEXT),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text()


def test_results_table_has_one_row_per_config_and_engine(report):
    header, rows = parse_results_table(report)
    assert tuple(header) == RESULTS_HEADER
    assert [(r[0], r[1]) for r in rows] == [("float", "float")] + [(c, e) for c in CONFIGS for e in ENGINES]
    for row in rows:
        assert len(row) == len(header)
        numbers = row[2:8]
        if row[1] == "float":
            assert numbers[0] == numbers[1] == "n/a"
            numbers = numbers[2:]
        values = [float(x) for x in numbers]  # every measured cell parses
        assert all(v > 0 for v in values), row


def test_compressed_layers_are_compared_with_nncf(report):
    _, rows = parse_results_table(report)
    for row in rows:
        if row[1] == "ours":
            identical, total = row[8].split(" ")[0].split("/")
            assert int(total) > 0 and 0 <= int(identical) <= int(total)


def test_report_has_context_and_ratios(report):
    for text in ("- Date:", "- Command: `python -m benchmarks.run --smoke", "- Machine:", "openvino ", "nncf ",
                 "## Ours / NNCF", "## Missed targets"):
        assert text in report
    ratios = report.split("## Ours / NNCF", 1)[1].split("## Missed targets", 1)[0]
    lines = [ln for ln in ratios.splitlines() if ln.startswith("| int")]
    assert [ln.split("|")[1].strip() for ln in lines] == list(CONFIGS)
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")][1:6]
        for cell in cells:
            ratio, verdict = cell.split(" ")
            assert float(ratio.rstrip("x")) > 0 and verdict in ("pass", "MISS")


def test_self_generated_calibration_is_the_auto_sampler_s_text(llama_ir, tmp_path):
    """``--calib-text auto`` gives both engines the samples ``dataset="auto"`` would make, one per 128-token chunk."""
    import numpy as np
    import openvino as ov
    from transformers import AutoTokenizer

    from benchmarks.self_generated import write_self_generated_tokens
    from benchmarks.worker import CALIB_SEQ_LEN
    from optimum_wc.calibration.samples import prepare_samples

    folder = llama_ir.parent
    path, seconds = write_self_generated_tokens(folder, tmp_path, 3, CALIB_SEQ_LEN)
    tokens = np.load(path)
    expected = prepare_samples("auto", AutoTokenizer.from_pretrained(folder), 3, CALIB_SEQ_LEN,
                               ov_model=ov.Core().read_model(llama_ir), seed=0)
    assert tokens.shape == (3 * CALIB_SEQ_LEN,) and seconds > 0
    np.testing.assert_array_equal(tokens.reshape(3, CALIB_SEQ_LEN), np.stack(expected))
