"""optimum-wc: weight compression for LLMs exported to OpenVINO, with our own engine.

Light to import: the config and errors load at once; the engine, the exporter
and the ``OVModelForCausalLM`` class (which import OpenVINO and
optimum-intel) load on first use.  The layers of the package, bottom up:
``config``/``errors``/``layout``, ``quant``, ``ir``, ``calibration`` and
``checkpoints``, ``report``/``evaluation``, ``engine``, ``export``, ``hf``,
``cli`` (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (
    BackupMode,
    CompressWeightsMode,
    GroupSizeFallback,
    IgnoredScope,
    SensitivityMetric,
    WeightCompressionConfig,
)
from .errors import (
    ConfigError,
    ExportError,
    GroupSizeError,
    ModelError,
    NotYetSupportedError,
    OptimumWCError,
)

_LAZY = {
    "__version__": "optimum_wc.version",
    "compress_model": "optimum_wc.engine",
    "export_model": "optimum_wc.hf.api",
    "OVModelForCausalLM": "optimum_wc.hf.modeling",
    "reference_ir": "optimum_wc.export.reference",
}

__all__ = [
    "BackupMode",
    "CompressWeightsMode",
    "ConfigError",
    "ExportError",
    "GroupSizeError",
    "GroupSizeFallback",
    "IgnoredScope",
    "ModelError",
    "NotYetSupportedError",
    "OptimumWCError",
    "SensitivityMetric",
    "WeightCompressionConfig",
    *(name for name in _LAZY if name != "__version__"),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'optimum_wc' has no attribute {name!r}")


# Let optimum-intel's own OVModelForCausalLM accept our config (see hf/hook.py).
from .hf import hook as _hook  # noqa: E402

_hook.install()
