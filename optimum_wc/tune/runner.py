"""Running tune candidates: one compression + evaluation per job, in local processes or Ray tasks.

A *job* is a JSON-ready dict (float IR folder, config, calibration samples,
evaluation tokens, where to write); :func:`run_candidate` does it and returns
the figures.  Locally each job is its own process (``python -m
optimum_wc.tune.worker JOB``): its memory is freed when it ends and it can be
stopped at once.  With Ray each job is a task on the cluster; the paths in a
job must then be on a filesystem every node sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import OptimumWCError
from .space import Candidate

RESULT_SUFFIX = ".json"


def compress_candidate(job: dict[str, Any]) -> dict[str, Any]:
    """Compress the float IR with the job's config into ``job["out"]``; the compression report and its seconds."""
    import numpy as np

    from ..config import WeightCompressionConfig
    from ..export.pipeline import compress_ir_folder

    config = WeightCompressionConfig.from_dict(job["config"])
    dataset = None
    if config.needs_data:
        with np.load(job["calibration"]) as z:
            dataset = [{"input_ids": z[k][None, :]} for k in sorted(z.files, key=int)]
    start = time.perf_counter()
    report = compress_ir_folder(job["float_ir"], job["out"], config, dataset=dataset,
                                statistics_path=job.get("statistics_path"))
    return dict(report, seconds=time.perf_counter() - start)


def run_candidate(job: dict[str, Any]) -> dict[str, Any]:
    """Compress the float IR with the job's config into ``job["out"]``, evaluate it, and return the figures."""
    import numpy as np

    from ..evaluation import evaluate_many, ir_size

    report = compress_candidate(job)
    tokens = np.load(job["eval_tokens"])
    reference = np.load(job["reference_argmax"]) if job.get("reference_argmax") else None
    result = evaluate_many({"model": Path(job["out"])}, tokens, window=job["window"],
                           reference_argmax=reference)["model"]
    return {
        "size_bytes": ir_size(job["out"]),
        "perplexity": result.perplexity,
        "top1_agreement": result.top1_agreement,
        "compress_seconds": round(report["seconds"], 3),
        "compress_stage_seconds": report.get("timings", {}).get("compress_s"),
        "peak_rss_bytes": report.get("resources", {}).get("peak_rss_bytes"),
    }


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:400]


class LocalRunner:
    """Up to ``jobs`` candidates at once, each in its own Python process."""

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)
        self._env = dict(os.environ)
        if self.jobs > 1:  # share the cores: BLAS threads per job (OpenVINO's streams adapt by themselves)
            self._env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        self._procs: dict[str, tuple[Candidate, subprocess.Popen, Path]] = {}

    @property
    def running(self) -> list[Candidate]:
        return [c for c, _, _ in self._procs.values()]

    @property
    def capacity(self) -> int:
        return self.jobs - len(self._procs)

    def submit(self, candidate: Candidate, job: dict[str, Any], job_file: Path) -> None:
        job_file.write_text(json.dumps(job, indent=1))
        result = job_file.with_suffix(".result" + RESULT_SUFFIX)
        result.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "optimum_wc.tune.worker", str(job_file), str(result)]
        with open(job_file.with_suffix(".log"), "w") as log:  # a file, not a pipe: a chatty worker never blocks
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=self._env)
        self._procs[candidate.name] = (candidate, proc, result)

    def wait(self, timeout: float | None = None) -> list[tuple[Candidate, dict[str, Any]]]:
        """Candidates finished within ``timeout`` seconds (at least one unless it runs out), with their figures."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._procs:
            done = [(name, entry) for name, entry in self._procs.items() if entry[1].poll() is not None]
            if done:
                return [self._collect(name, *entry) for name, entry in done]
            if deadline is not None and time.monotonic() >= deadline:
                return []
            time.sleep(0.2)
        return []

    def _collect(self, name: str, candidate: Candidate, proc: subprocess.Popen, result: Path):
        del self._procs[name]
        if result.is_file():
            return candidate, json.loads(result.read_text())
        log = result.with_name(result.name.replace(".result" + RESULT_SUFFIX, ".log"))
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        last = [line for line in lines if line.strip()][-1:] or [f"exit status {proc.returncode}"]
        return candidate, {"error": f"the worker process failed: {last[0].strip()[:400]}"}

    def cancel(self) -> None:
        for _, proc, _ in self._procs.values():
            proc.kill()
        for _, proc, _ in self._procs.values():
            proc.wait()
        self._procs.clear()


class RayRunner:
    """Candidates as Ray tasks; ``address``: a cluster's, ``auto`` (the running one) or ``local`` (start one here)."""

    def __init__(self, address: str, jobs: int | None = None, cpus_per_job: float = 1.0):
        try:
            import ray
        except ImportError as exc:
            raise OptimumWCError("--ray needs Ray: pip install 'optimum-wc[ray]' (or pip install ray).") from exc
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address == "local":
                kwargs["num_cpus"] = jobs or os.cpu_count() or 1
            else:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
                raise OptimumWCError(f"cannot connect to the Ray cluster at {address!r}: {_one_line(exc)}; start it "
                                     "with `ray start --head`, or pass --ray local for one on this machine.") from exc
        total = int(ray.cluster_resources().get("CPU", 1))
        self.jobs = max(1, jobs or int(total // cpus_per_job))
        self._remote = ray.remote(num_cpus=cpus_per_job, max_retries=0)(run_candidate)
        self._refs: dict[Any, Candidate] = {}

    @property
    def running(self) -> list[Candidate]:
        return list(self._refs.values())

    @property
    def capacity(self) -> int:
        return self.jobs - len(self._refs)

    def submit(self, candidate: Candidate, job: dict[str, Any], job_file: Path) -> None:
        job_file.write_text(json.dumps(job, indent=1))
        self._refs[self._remote.remote(job)] = candidate

    def wait(self, timeout: float | None = None) -> list[tuple[Candidate, dict[str, Any]]]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            candidate = self._refs.pop(ref)
            try:
                out.append((candidate, self._ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - a task's failure becomes the candidate's error
                cause = getattr(exc, "cause", None) or exc
                out.append((candidate, {"error": f"the Ray task failed: {_one_line(cause)}"}))
        return out

    def cancel(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()
