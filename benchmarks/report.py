"""The markdown report: results per config and engine, ours/NNCF ratios against the targets.

:func:`render` turns the rows of one run into the text of BENCHMARKS.md;
:func:`parse_results_table` reads the results table back (used by the tests).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .configs import PPL_TARGET, RSS_TARGET, SIZE_TARGET, SPEED_TARGET, BenchConfig

MiB = 1024 * 1024
NA = "n/a"
RESULTS_HEADER = (
    "Config", "Engine", "Compress (s)", "Peak RSS (MiB)", "Size (MiB)",
    "Perplexity", "Top-1 vs float (%)", "Tokens/s", "Identical to NNCF",
)
PACKAGES = ("openvino", "nncf", "optimum-intel", "optimum", "transformers", "torch", "optimum-wc")


@dataclass
class Row:
    """One line of the results table: one config compressed by one engine (or the float model)."""

    config: str
    engine: str  # "float", "nncf" or "ours"
    compress_s: float | None = None
    peak_rss_bytes: int | None = None
    size_bytes: int | None = None
    perplexity: float | None = None
    top1_agreement: float | None = None
    tokens_per_s: float | None = None
    parity: str | None = None
    error: str | None = None


@dataclass
class Check:
    """One ratio ours/NNCF against its target."""

    metric: str
    ratio: float | None
    op: str  # "<=" or ">="
    target: float

    @property
    def ok(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio <= self.target if self.op == "<=" else self.ratio >= self.target

    def cell(self) -> str:
        if self.ratio is None:
            return NA
        digits = 4 if self.metric == "perplexity" else 3
        return f"{self.ratio:.{digits}f}x {'pass' if self.ok else 'MISS'}"

    def sentence(self) -> str:
        return f"{self.metric} {self.ratio:.4g}x NNCF (target {self.op} {self.target}x)"


def checks(config: BenchConfig, nncf: Row, ours: Row) -> list[Check]:
    """The five ratios ours/NNCF of one config, each with its target."""
    def ratio(attr: str) -> float | None:
        a, b = getattr(ours, attr), getattr(nncf, attr)
        return None if a is None or not b else a / b

    return [
        Check("time", ratio("compress_s"), "<=", config.time_target),
        Check("RSS", ratio("peak_rss_bytes"), "<=", RSS_TARGET),
        Check("size", ratio("size_bytes"), "<=", SIZE_TARGET),
        Check("perplexity", ratio("perplexity"), "<=", PPL_TARGET),
        Check("speed", ratio("tokens_per_s"), ">=", SPEED_TARGET),
    ]


# -- formatting --------------------------------------------------------------


def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return NA if value is None else format(value / scale, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _result_cells(row: Row) -> list[str]:
    if row.error:
        return [row.config, row.engine] + ["error"] * (len(RESULTS_HEADER) - 2)
    return [
        row.config,
        row.engine,
        _num(row.compress_s, ".3g"),
        _num(row.peak_rss_bytes, ".0f", MiB),
        _num(row.size_bytes, ".2f", MiB),
        _num(row.perplexity, ".3f"),
        _num(None if row.top1_agreement is None else 100 * row.top1_agreement, ".2f"),
        _num(row.tokens_per_s, ".1f"),
        row.parity or NA,
    ]


def parse_results_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the ``## Results`` table of a report."""
    lines = markdown.split("## Results", 1)[1].splitlines()
    table = [ln for ln in _first_block(lines) if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    return split(table[0]), [split(ln) for ln in table[2:]]


def _first_block(lines: list[str]) -> list[str]:
    block, started = [], False
    for ln in lines:
        if ln.startswith("|"):
            started = True
            block.append(ln)
        elif started:
            break
    return block


# -- environment -------------------------------------------------------------


def machine_info() -> str:
    """CPU model, cores and memory, from /proc."""
    cpu = platform.processor() or platform.machine()
    mem_kib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = f"{mem_kib / 1024 / 1024:.1f} GiB memory" if mem_kib else "memory unknown"
    return f"{cpu}, {cores} cores, {memory}, {platform.system()} {platform.release()}"


def package_versions() -> str:
    out = []
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        if name == "optimum-wc":
            version += git_revision()
        out.append(f"{name} {version}")
    return ", ".join(out)


def git_revision() -> str:
    """`` (git abc1234)``, with ``+ uncommitted changes`` when optimum_wc/ has any."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "optimum_wc"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (git {head.stdout.strip()}{' + uncommitted changes' if dirty.stdout.strip() else ''})"


# -- the report ----------------------------------------------------------------


def render(
    *,
    command: str,
    model: str,
    configs: Sequence[BenchConfig],
    rows: Sequence[Row],
    settings: dict[str, Any],
    notes: Sequence[str] = (),
) -> str:
    """The full BENCHMARKS.md text of one run."""
    by_key = {(r.config, r.engine): r for r in rows}
    lines = [
        "# Benchmarks: optimum-wc vs NNCF",
        "",
        "Written by `python -m benchmarks.run`; every figure below comes from the one run described here.",
        "",
        f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command}`",
        f"- Model: {model}",
        f"- Machine: {machine_info()}",
        f"- Packages: {package_versions()}",
    ]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    lines += ["", "## Results", ""]
    lines += _table(RESULTS_HEADER, [_result_cells(r) for r in rows])
    lines += [
        "",
        "Compress: seconds of the compression call alone (after `read_model`, before saving). "
        "Peak RSS: peak resident memory (VmHWM) of the whole compression process (Python, imports, read, "
        "compress, save); `ru_maxrss` is not used because Linux carries it over from the parent process. "
        "Size: `openvino_model.bin` saved with `compress_to_fp16=False`. "
        "Identical to NNCF: layers whose integer codes and zero points are byte-identical to NNCF's / NNCF's "
        "compressed layers (and how many of those also have identical scales).",
        "",
        "## Ours / NNCF",
        "",
    ]
    ratio_rows, misses = [], []
    for config in configs:
        nncf, ours = by_key.get((config.name, "nncf")), by_key.get((config.name, "ours"))
        if nncf is None or ours is None or nncf.error or ours.error:
            ratio_rows.append([config.name] + [NA] * 5 + ["not measured (error)"])
            misses.append(f"- {config.name}: not measured, a run failed (see Errors).")
            continue
        cs = checks(config, nncf, ours)
        missed = [c for c in cs if c.ok is False]
        verdict = "all met" if not missed else "missed: " + ", ".join(c.metric for c in missed)
        ratio_rows.append([config.name] + [c.cell() for c in cs] + [verdict])
        misses += [f"- {config.name}: {c.sentence()}." for c in missed]
    time_targets = sorted({c.time_target for c in configs}) or [0.25]
    lines += _table(
        (
            "Config", f"Time (<= {'/'.join(map(str, time_targets))}x)", f"RSS (<= {RSS_TARGET}x)",
            f"Size (<= {SIZE_TARGET}x)", f"Perplexity (<= {PPL_TARGET}x)", f"Speed (>= {SPEED_TARGET}x)", "Targets",
        ),
        ratio_rows,
    )
    lines += ["", "## Missed targets", ""]
    lines += misses or ["None: every target was met in this run."]
    errors = [r for r in rows if r.error]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {r.config} / {r.engine}: {r.error}" for r in errors]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


LARGE_MODELS = "## Large models"  # written by benchmarks.large_models, kept by benchmarks.run
FORMATS_SECTION = "## Weight formats"  # written by benchmarks.run --section "Weight formats", kept by the full run
KEPT_SECTIONS = (FORMATS_SECTION, LARGE_MODELS)


def section(text: str, heading: str) -> str | None:
    """The section of ``text`` from the line ``heading`` to the next ``## `` heading (or the end), or None."""
    lines = text.split("\n")
    if heading not in lines:
        return None
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).rstrip("\n") + "\n"


def with_section(text: str, heading: str, body: str) -> str:
    """``text`` with the section ``heading`` replaced by ``body`` (which starts with the heading), else appended."""
    old = section(text, heading)
    if old is None:
        return text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    return text.replace(old, body.rstrip("\n") + "\n")
