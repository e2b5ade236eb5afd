"""The examples run (on the tiny model) so none goes stale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_export_int4_example(llama_dir, tmp_path):
    out = tmp_path / "int4"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "export_int4.py"), str(llama_dir), str(out), "--group-size", "32"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Exported and compressed" in result.stdout and "A: " in result.stdout
    assert (out / "openvino_model.xml").is_file() and (out / "optimum_wc_config.json").is_file()


def test_export_awq_example(llama_dir, tmp_path):
    from conftest import CALIBRATION_TEXT

    out = tmp_path / "awq"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "export_awq.py"), str(llama_dir), str(out),
         "--text", str(CALIBRATION_TEXT), "--samples", "4", "--group-size", "32"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AWQ + scale estimation export" in result.stdout and "report: " in result.stdout
    import json

    config = json.loads((out / "optimum_wc_config.json").read_text())
    assert config["awq"] and config["scale_estimation"] and config["subset_size"] == 4
