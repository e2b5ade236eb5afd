"""Two exports of the same model with the same config give byte-identical IR, whatever the number of threads.

Each export runs in its own process (as a user runs it), with a different
thread environment: one core (``taskset``) and one thread for OpenMP, MKL
and Numba, against two cores and two threads.  OpenVINO sizes its thread
pool from the CPUs the process may use, so this varies its threads too.
The ``.bin`` and ``.xml`` are compared by hash.  Measurements behind this
(and the data-aware case) are in docs/RELIABILITY.md, "Inputs and determinism".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = Path(__file__).resolve().parent / "data" / "emma_excerpt.txt"
THREADS = {"one": ("0", "1"), "two": ("0,1", "2")}  # name -> (CPUs, threads)


def _export(model: Path, out: Path, threads: str, flags: list[str]) -> dict[str, str]:
    cpus, n = THREADS[threads]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}
    command = [sys.executable, "-m", "optimum_wc", "-q", "export", "-m", str(model), str(out), *flags]
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        command = ["taskset", "-c", cpus, *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
            for name in ("openvino_model.bin", "openvino_model.xml")}


@pytest.mark.parametrize("flags", [
    ["--weight-format", "int4", "--group-size", "16"],
    ["--weight-format", "int8"],
], ids=["int4_asym", "int8_asym"])
def test_data_free_exports_are_identical_across_thread_counts(llama_dir, tmp_path, flags):
    one = _export(llama_dir, tmp_path / "one", "one", flags)
    two = _export(llama_dir, tmp_path / "two", "two", flags)
    assert one == two


def test_data_aware_exports_are_identical_run_to_run(llama_dir, tmp_path):
    """AWQ + scale estimation on 8 samples: the same process environment twice gives the same bytes."""
    flags = ["--weight-format", "int4", "--group-size", "16", "--awq", "--scale-estimation", "--dataset", str(TEXT),
             "--num-samples", "8"]
    assert _export(llama_dir, tmp_path / "a", "two", flags) == _export(llama_dir, tmp_path / "b", "two", flags)
