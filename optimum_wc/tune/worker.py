"""``python -m optimum_wc.tune.worker JOB RESULT``: run one tune candidate, write its figures (or its error) as JSON.

The result file appears only when complete (written beside, then renamed),
so a killed worker leaves none and the candidate counts as not run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    job_file, result_file = Path(argv[0]), Path(argv[1])
    logging.disable(logging.WARNING)  # the parent reports; the engine's tables would only fill a pipe
    from .runner import run_candidate

    try:
        result = run_candidate(json.loads(job_file.read_text()))
        code = 0
    except Exception as exc:  # noqa: BLE001 - the error is the candidate's result
        result, code = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:400]}, 0
    tmp = result_file.with_name(result_file.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_file)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
