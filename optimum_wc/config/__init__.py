"""The typed configuration of weight compression.

``WeightCompressionConfig`` carries the options of NNCF's ``compress_weights``
with the same defaults, is validated when it is built (each message names the
field, the value and the fix) and round-trips through JSON.  It imports
nothing heavy, so the CLI and config handling stay fast.
"""

from .choices import (
    DATA_AWARE_ALGORITHMS,
    MIN_ADJUSTED_GROUP_SIZE,
    WEIGHT_FORMAT_MODES,
    BackupMode,
    CompressWeightsMode,
    GroupSizeFallback,
    IgnoredScope,
    SensitivityMetric,
    mode_of_weight_format,
)
from .options import WeightCompressionConfig

__all__ = [
    "BackupMode",
    "CompressWeightsMode",
    "GroupSizeFallback",
    "IgnoredScope",
    "SensitivityMetric",
    "WeightCompressionConfig",
]
