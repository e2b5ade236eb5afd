"""``optimum-wc tune``: the smallest compressed model within a perplexity budget (see :mod:`.api`).

Loaded lazily: the command line reads :mod:`.settings` without importing
OpenVINO or the engine.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TuneError", "TuneResult", "TuneSettings", "parse_budget", "parse_duration", "tune_model"]


def __getattr__(name: str) -> Any:
    if name in ("TuneError", "TuneResult", "tune_model"):
        from . import api

        return getattr(api, name)
    if name in ("TuneSettings", "parse_budget", "parse_duration"):
        from . import settings

        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
