"""``optimum-wc tune MODEL OUT --max-ppl-increase 2%``: the smallest model within a perplexity budget."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .options import UsageError, add_output_options, add_source_trust_options


def add_tune_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune", help="find and export the smallest compressed model within a perplexity budget",
        description="Search compression configs (INT8, INT4 asym/sym with group sizes 128/64/32 and ratios "
                    "1.0/0.9/0.8; "
                    "round to nearest first, then GPTQ + scale estimation + act-order + GPTAQ only where it can "
                    "win) for the smallest model whose perplexity on held-out text is "
                    "within the budget of the float model's; export it to OUT with the table of every candidate "
                    "(tune_candidates.md/.json) and a plot of size against perplexity (tune_pareto.png).")
    p.add_argument("model", metavar="MODEL", help="a Transformers checkpoint folder, or a float OpenVINO IR folder")
    p.add_argument("output", metavar="OUT", type=Path, help="output folder (written only once the search is over)")
    p.add_argument("--max-ppl-increase", required=True, metavar="PCT",
                   help="allowed perplexity increase over the float model, e.g. 2%% (or 0.02)")
    p.add_argument("--max-size", type=float, default=None, metavar="MB",
                   help="also keep the weights file at most MB MiB")
    p.add_argument("--text", metavar="FILE", default=None,
                   help="held-out evaluation text, a file or folder of .txt files (default: a built-in excerpt of "
                        "Pride and Prejudice); never the calibration data")
    p.add_argument("--dataset", metavar="DATA", default=None,
                   help="calibration data of the data-aware candidates: a text file or folder, a dataset name, or "
                        "'auto' (default: text the model generates itself)")
    p.add_argument("--data-free", action="store_true", help="try round to nearest only (no calibration)")
    p.add_argument("--num-samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--sample-length", type=int, default=128, help="tokens per calibration sample (default 128)")
    p.add_argument("--tokens", type=int, default=8192, help="evaluate on the first N tokens of the text (default 8192)")
    p.add_argument("--window", type=int, default=512, help="evaluation window in tokens (default 512)")
    p.add_argument("--time-budget", metavar="DURATION", default=None,
                   help="stop the search after this long with the best found (600, 10m, 1h)")
    p.add_argument("--jobs", type=int, default=1,
                   help="candidates run at once in local processes (default 1: each uses every core)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run candidates as tasks on a Ray cluster: its address, 'auto' (the running one) or 'local' "
                        "(start one here); needs pip install 'optimum-wc[ray]'")
    p.add_argument("--work", metavar="DIR", type=Path, default=None,
                   help="work folder: float IR, statistics and cached results, so an interrupted tune resumes "
                        "(default OUT.tune beside OUT)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder at the end")
    add_source_trust_options(p)
    add_output_options(p)
    return p


def settings_from_args(args: argparse.Namespace):
    """The :class:`~optimum_wc.tune.settings.TuneSettings` of the flags (usage errors exit with code 2)."""
    from ..errors import ConfigError
    from ..tune.settings import TuneSettings, parse_budget, parse_duration

    if args.data_free and args.dataset:
        raise UsageError("--data-free and --dataset contradict each other; give one of them.")
    if args.ray and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs} must be at least 1.")
    try:
        return TuneSettings(
            max_ppl_increase=parse_budget(args.max_ppl_increase), max_size_mb=args.max_size, text=args.text,
            dataset=args.dataset, tokens=args.tokens, window=args.window, num_samples=args.num_samples,
            sample_length=args.sample_length, data_aware=not args.data_free, jobs=args.jobs, ray=args.ray,
            time_budget=None if args.time_budget is None else parse_duration(args.time_budget),
            work_dir=args.work, keep_work=args.keep_work)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def cmd_tune(args: argparse.Namespace) -> dict:
    from .commands import Console, _quiet_third_party
    from .options import check_output_dir

    settings = settings_from_args(args)
    if not Path(args.model).exists():
        raise UsageError(f"model {args.model!r} not found; pass a Transformers checkpoint folder or a float IR folder.")
    check_output_dir(args.output)
    console = Console(args)
    if not console.verbose:
        _quiet_third_party(console.progress)
    from ..tune import tune_model
    from ..tune.table import PLOT_PNG, TABLE_MD

    start = time.perf_counter()
    result = tune_model(args.model, args.output, settings, progress=console.progress, say=console.say,
                        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    c = result.chosen
    console.out((args.output / TABLE_MD).read_text())
    console.out(f"Chosen: {c.candidate.name}: {c.size_bytes / 2**20:.2f} MiB, perplexity {c.perplexity:.3f} "
                f"(float {result.float_perplexity:.3f}, budget {result.max_perplexity:.3f}); "
                f"{len(result.outcomes)} candidates in {time.perf_counter() - start:.0f} s"
                + (" (stopped by --time-budget)" if result.stopped_early else ""))
    console.out(f"Saved to {args.output} (table: {TABLE_MD}, plot: {PLOT_PNG})")
    return {"chosen": c.to_dict(), "output": str(args.output)}
