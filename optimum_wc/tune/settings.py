"""The typed settings of ``optimum-wc tune``, checked when built, and the parsers of their command-line forms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

DEFAULT_EVAL_TOKENS = 8192
DEFAULT_WINDOW = 512


def parse_budget(text: str | float) -> float:
    """``"2%"`` or ``"0.02"`` -> 0.02: the allowed relative increase of perplexity over the float model's."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"--max-ppl-increase {raw!r} is not a number; write a percentage such as 2% "
                          "(or the fraction 0.02).") from None
    if not raw.endswith("%") and value >= 1:
        raise ConfigError(f"--max-ppl-increase {raw} is ambiguous: write {raw}% for a percentage, or a fraction "
                          "below 1 (0.02 = 2%).")
    if not 0 < value < 1:
        raise ConfigError(f"--max-ppl-increase {raw} must be above 0% and below 100% (e.g. 2%): "
                          "0 allows no loss at all, and 100% would allow doubling the perplexity.")
    return value


def parse_duration(text: str | float) -> float:
    """``"600"``, ``"600s"``, ``"10m"``, ``"1.5h"`` -> seconds."""
    raw = str(text).strip().lower()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([smh]?)", raw)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--time-budget {text!r} is not a positive duration; write seconds (600) or 10m / 1h.")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass(frozen=True)
class TuneSettings:
    """What ``tune`` looks for and with what means.

    Objective: the smallest model whose perplexity on ``text`` (held-out
    text, never the calibration data) is at most ``(1 + max_ppl_increase)``
    times the float model's, and whose weights file is at most
    ``max_size_mb`` MiB if given.  ``dataset``: calibration data of the
    data-aware candidates (a text file or folder, a dataset name, or
    ``"auto"``: text the model generates itself); ``data_aware=False`` tries
    round to nearest only.  ``jobs`` candidates run at once (local
    processes, or Ray tasks on the cluster at ``ray``: an address, ``auto``
    or ``local``); ``time_budget`` (seconds) stops the search with the best
    found.  ``work_dir`` (default ``OUT.tune`` beside the output) holds the
    float IR, the shared statistics and the cached results, so a tune
    that was interrupted resumes; it is removed at the end unless
    ``keep_work``.
    """

    max_ppl_increase: float
    max_size_mb: float | None = None
    text: str | Path | None = None
    dataset: str | Path | None = None
    tokens: int = DEFAULT_EVAL_TOKENS
    window: int = DEFAULT_WINDOW
    num_samples: int = 128
    sample_length: int = 128
    data_aware: bool = True
    jobs: int = 1
    ray: str | None = None
    time_budget: float | None = None
    work_dir: str | Path | None = None
    keep_work: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_ppl_increase, bool) or not 0 < float(self.max_ppl_increase) < 1:
            raise ConfigError(f"max_ppl_increase={self.max_ppl_increase!r} must be a fraction in (0, 1), "
                              "e.g. 0.02 for 2%.")
        if self.max_size_mb is not None and not float(self.max_size_mb) > 0:
            raise ConfigError(f"--max-size {self.max_size_mb} must be a positive number of MiB (e.g. 4000).")
        if self.window < 2 or self.tokens < self.window:
            raise ConfigError(f"--tokens {self.tokens} must be at least one --window ({self.window}), and the "
                              "window at least 2 tokens.")
        for name in ("num_samples", "sample_length", "jobs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1.")
        if self.time_budget is not None and not float(self.time_budget) > 0:
            raise ConfigError(f"--time-budget {self.time_budget} must be a positive number of seconds.")
        if self.text is not None and not Path(self.text).exists():
            raise ConfigError(f"--text {str(self.text)!r} not found; pass a text file (or a folder of .txt files) "
                              "that the calibration data does not contain.")
        if self.text is not None and self.dataset is not None and Path(self.dataset).exists():
            text, data = Path(self.text).resolve(), Path(self.dataset).resolve()
            if text == data or data in text.parents or text in data.parents:
                raise ConfigError(f"--text {self.text} and --dataset {self.dataset} overlap: perplexity must be "
                                  "measured on held-out text; pass evaluation text that calibration does not read.")

    @property
    def max_size_bytes(self) -> int | None:
        return None if self.max_size_mb is None else int(float(self.max_size_mb) * 2**20)
