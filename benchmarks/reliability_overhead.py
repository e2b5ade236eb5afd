"""What issue 17's safety work adds to a normal export, part by part (milliseconds, median of N runs).

Objective: show "nothing here slows a normal export by more than 1 %" from
the parts themselves, since a whole-export comparison (``farm-bench`` of this
commit against one before the work, see BENCHMARKS.md) cannot resolve 1 % on
a noisy machine. Each part is what an export runs once and did not run
before: the checkpoint's header checks, the pickle check, the space estimate
(a walk of the checkpoint's file sizes), and the staging round trip (lock,
removal of dead runs' leftovers, a staging folder, the rename into place over
an existing output). Run alone on the machine:

    python -m benchmarks.reliability_overhead CHECKPOINT_DIR [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 3)


def measure(checkpoint: Path, runs: int) -> dict[str, float]:
    """Median milliseconds of each part an export now runs once, on ``checkpoint``."""
    from optimum_wc.checkpoints.integrity import check_checkpoint_files, check_pickled_weights
    from optimum_wc.staging import folder_bytes, move_into_place, staging_dir

    with tempfile.TemporaryDirectory(dir=checkpoint.parent) as scratch:  # the output's file system
        target = Path(scratch) / "out"
        target.mkdir()
        (target / "openvino_model.xml").write_text("previous output")

        def round_trip() -> None:
            with staging_dir(target) as tmp:
                (tmp / "out").mkdir()
                (tmp / "out" / "openvino_model.xml").write_text("new output")
                move_into_place(tmp / "out", target)

        parts = {
            "header_checks_ms": _median_ms(lambda: check_checkpoint_files(checkpoint), runs),
            "pickle_check_ms": _median_ms(lambda: check_pickled_weights(checkpoint), runs),
            "space_estimate_ms": _median_ms(lambda: folder_bytes(checkpoint), runs),
            "staging_round_trip_ms": _median_ms(round_trip, runs),
        }
    parts["total_ms"] = round(sum(parts.values()), 3)
    return parts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a Transformers checkpoint folder (safetensors)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--export-seconds", type=float, default=None,
                        help="the export's own median time, to print the parts as a fraction of it")
    args = parser.parse_args(argv)
    parts = measure(args.checkpoint.resolve(), args.runs)
    if args.export_seconds:
        parts["fraction_of_export_pct"] = round(100 * parts["total_ms"] / (1e3 * args.export_seconds), 4)
    print(json.dumps(parts, indent=1))


if __name__ == "__main__":
    main()
