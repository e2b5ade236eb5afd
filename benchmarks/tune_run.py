"""The tune benchmark: ``optimum-wc tune`` on SmolLM2 with a perplexity budget, against the hand-picked configs.

    python -m benchmarks.tune_run [--budget 5%] [--section "Tune (issue 15)"]

Runs the command a user would (``python -m optimum_wc tune CHECKPOINT OUT
--max-ppl-increase 5% --text prideprejudice.txt --dataset <the other five
novels>``) in a fresh process, timed as a whole (export included), from an
empty work folder; then reads its table and compares the chosen size with
the smallest hand-picked config within the same budget among the rows of
BENCHMARKS.md (both engines; same evaluation text and token count).  Writes
a section into BENCHMARKS.md and the plot to ``docs/tune_smollm2.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .report import with_section
from .run import default_calib_texts, default_eval_text

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "benchmarks" / "work" / "smollm2-135m-instruct" / "checkpoint-v3"
PLOT = ROOT / "docs" / "tune_smollm2.png"
ROW = re.compile(r"^\| (\S+) \| (ours|nncf|float) \| [^|]+ \| [^|]+ \| ([0-9.]+) \| ([0-9.]+) \|")


def hand_picked(benchmarks: str, max_ppl: float) -> tuple[str, str, float, float] | None:
    """The smallest (config, engine, MiB, perplexity) of BENCHMARKS.md's result rows within ``max_ppl``."""
    rows = []
    for line in benchmarks.splitlines():
        m = ROW.match(line)
        if m and m.group(2) != "float" and float(m.group(4)) <= max_ppl:
            rows.append((m.group(1), m.group(2), float(m.group(3)), float(m.group(4))))
    return min(rows, key=lambda r: (r[2], r[3]), default=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="5%")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--section", default="Tune (issue 15)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more tune flags")
    args = parser.parse_args(argv)
    eval_text = default_eval_text()
    if eval_text is None or not args.checkpoint.is_dir():
        print("needs ../shared/data/austen and the benchmark checkpoint (python -m benchmarks.run prepares it)")
        return 2
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        calib = Path(tmp) / "calibration"
        calib.mkdir()
        for f in default_calib_texts(eval_text):
            (calib / f.name).symlink_to(f)
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "optimum_wc", "tune", str(args.checkpoint), str(out), "--max-ppl-increase",
               args.budget, "--text", str(eval_text), "--dataset", str(calib), *args.extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return proc.returncode
        summary = json.loads((out / "tune_candidates.json").read_text())
        table = (out / "tune_candidates.md").read_text()
        PLOT.parent.mkdir(exist_ok=True)
        shutil.copy(out / "tune_pareto.png", PLOT)
    bench = (ROOT / "BENCHMARKS.md").read_text()
    chosen = next(r for r in summary["candidates"] if r["name"] == summary["chosen"])
    picked = hand_picked(bench, summary["max_perplexity"])
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    n_data_aware = sum(r["method"] != "rtn" for r in summary["candidates"])
    lines = [
        f"## {args.section}",
        "Written by `python -m benchmarks.tune_run`; every figure below comes from the one run described here.",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC (git {git.strip()})",
        f"- Command: `optimum-wc tune {args.checkpoint.relative_to(ROOT)} OUT --max-ppl-increase {args.budget} "
        f"--text prideprejudice.txt --dataset <the other five novels>{' ' + ' '.join(args.extra) if args.extra else ''}`"
        " (a fresh process, from an empty work folder: float export included)",
        f"- Wall time: **{wall:.0f} s** ({wall / 60:.1f} min); {len(summary['candidates'])} candidates "
        f"({len(summary['candidates']) - n_data_aware} round to nearest, {n_data_aware} data-aware)",
        f"- Chosen: **{chosen['name']}**, {chosen['size_bytes'] / 2**20:.2f} MiB, perplexity {chosen['perplexity']:.3f} "
        f"(budget {summary['max_perplexity']:.3f})",
        "- Smallest hand-picked config of this file within the same budget: "
        + (f"{picked[0]} ({picked[1]}), {picked[2]:.2f} MiB, perplexity {picked[3]:.3f}: tune's choice is "
           f"{chosen['size_bytes'] / 2**20 / picked[2]:.4f}x its size" if picked else "none"),
        "",
        table.rstrip("\n"),
        "",
        f"![size against perplexity]({PLOT.relative_to(ROOT)})",
        "",
    ]
    (ROOT / "BENCHMARKS.md").write_text(with_section(bench, f"## {args.section}", "\n".join(lines)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
