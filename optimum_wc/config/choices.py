"""The enumerated options of weight compression, and the ignored scope (imports nothing heavy)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError

class _StrEnum(str, enum.Enum):
    """An enum that accepts its value in any letter case and prints as its value."""

    @classmethod
    def coerce(cls, value: Any, field_name: str):
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):  # e.g. nncf.CompressWeightsMode.INT4_ASYM
            value = value.value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"{field_name}={value!r} is not allowed; use one of {allowed}.")

    def __str__(self) -> str:
        return self.value


class CompressWeightsMode(_StrEnum):
    """Primary precision of the compressed weights (the 15 modes of NNCF 3.4)."""

    INT8_ASYM = "int8_asym"
    INT8_SYM = "int8_sym"
    INT4_SYM = "int4_sym"
    INT4_ASYM = "int4_asym"
    INT3_SYM = "int3_sym"
    INT2_SYM = "int2_sym"
    NF4 = "nf4"
    CB4 = "cb4"
    MXFP4 = "mxfp4"
    MXFP8_E4M3 = "mxfp8_e4m3"
    FP8_E4M3 = "fp8_e4m3"
    FP4 = "fp4"
    NVFP4 = "nvfp4"
    CODEBOOK = "codebook"
    ADAPTIVE_CODEBOOK = "adaptive_codebook"

    @property
    def num_bits(self) -> int:
        """Bits per stored weight value (a codebook of 16 entries or fewer: 4)."""
        return _MODE_BITS[self]

    @property
    def is_asym(self) -> bool:
        return self in (CompressWeightsMode.INT8_ASYM, CompressWeightsMode.INT4_ASYM)

    @property
    def is_int8(self) -> bool:
        """An INT8 mode: every layer per output channel, no mixed precision, no data-aware algorithm."""
        return self in (CompressWeightsMode.INT8_ASYM, CompressWeightsMode.INT8_SYM)

    @property
    def is_integer(self) -> bool:
        """Codes are integer levels on a uniform grid (else float elements or codebook indices)."""
        return self.value.startswith("int")

    @property
    def is_codebook(self) -> bool:
        return self in (CompressWeightsMode.CB4, CompressWeightsMode.CODEBOOK, CompressWeightsMode.ADAPTIVE_CODEBOOK)

    @property
    def default_group_size(self) -> int:
        """NNCF's group size for the mode: -1 (per channel) for INT8 and codebooks, 32 for MX, 16 for NVFP4, else 128."""
        return _MODE_GROUP_SIZE.get(self, 128)

    @property
    def fixed_group_size(self) -> int | None:
        """The only group size the format defines (32 for MX, 16 for NVFP4), else None."""
        return _MODE_GROUP_SIZE[self] if self in _FIXED_GROUP else None

    @property
    def default_backup(self) -> "BackupMode":
        """NNCF's backup precision for the mode: MXFP8 for MX formats, FP8 for FP4/FP8, else INT8_ASYM."""
        return BackupMode(_MODE_BACKUP.get(self, "int8_asym"))

    @property
    def allows_data_aware(self) -> bool:
        """AWQ, scale estimation, GPTQ and LoRA correction apply (NNCF refuses them for INT8 and the FP/MX formats)."""
        return not self.is_int8 and self not in _NO_DATA_AWARE


_MODE_BITS = {m: int(m.value[3]) if m.is_integer else (8 if "fp8" in m.value else 4) for m in CompressWeightsMode}
_MODE_GROUP_SIZE = {
    CompressWeightsMode.INT8_ASYM: -1, CompressWeightsMode.INT8_SYM: -1, CompressWeightsMode.MXFP4: 32,
    CompressWeightsMode.MXFP8_E4M3: 32, CompressWeightsMode.NVFP4: 16, CompressWeightsMode.CB4: -1,
    CompressWeightsMode.CODEBOOK: -1, CompressWeightsMode.ADAPTIVE_CODEBOOK: -1,
}
_FIXED_GROUP = (CompressWeightsMode.MXFP4, CompressWeightsMode.MXFP8_E4M3, CompressWeightsMode.NVFP4)
_MODE_BACKUP = {
    CompressWeightsMode.MXFP4: "mxfp8_e4m3", CompressWeightsMode.MXFP8_E4M3: "mxfp8_e4m3",
    CompressWeightsMode.FP4: "fp8_e4m3", CompressWeightsMode.FP8_E4M3: "fp8_e4m3",
}
_NO_DATA_AWARE = (
    CompressWeightsMode.MXFP4, CompressWeightsMode.MXFP8_E4M3, CompressWeightsMode.FP8_E4M3,
    CompressWeightsMode.FP4, CompressWeightsMode.NVFP4,
)


# Short format names (optimum-cli's --weight-format spellings, and one per NNCF mode) -> mode.
# "int8" and "int4" are completed by the symmetric flag: int8_sym / int8_asym.
WEIGHT_FORMAT_MODES = {
    "int8": "int8", "int4": "int4", "int3": "int3_sym", "int2": "int2_sym", "nf4": "nf4", "fp4": "fp4",
    "fp8": "fp8_e4m3", "f8e4m3": "fp8_e4m3", "mxfp4": "mxfp4", "mxfp8": "mxfp8_e4m3", "nvfp4": "nvfp4",
    "cb4": "cb4", "codebook": "codebook", "adaptive_codebook": "adaptive_codebook",
}


def mode_of_weight_format(fmt: str, sym: bool) -> CompressWeightsMode:
    """The mode a short format name stands for (``int4`` + ``sym`` -> ``int4_sym``)."""
    mode = WEIGHT_FORMAT_MODES.get(fmt.lower())
    if mode is None:
        raise ConfigError(f"weight format {fmt!r} is not known; use one of {', '.join(WEIGHT_FORMAT_MODES)}.")
    if mode in ("int8", "int4"):
        mode = f"{mode}_{'sym' if sym else 'asym'}"
    return CompressWeightsMode(mode)


class BackupMode(_StrEnum):
    """Precision of the weights that do not get the primary mode (mixed precision, embeddings, last layer)."""

    INT8_ASYM = "int8_asym"
    INT8_SYM = "int8_sym"
    MXFP8_E4M3 = "mxfp8_e4m3"
    FP8_E4M3 = "fp8_e4m3"
    NONE = "none"

    def as_mode(self) -> CompressWeightsMode | None:
        return None if self is BackupMode.NONE else CompressWeightsMode(self.value)


class SensitivityMetric(_StrEnum):
    """How layers are ranked when ``ratio < 1`` decides which get the primary mode."""

    WEIGHT_QUANTIZATION_ERROR = "weight_quantization_error"
    HESSIAN_INPUT_ACTIVATION = "hessian_input_activation"
    MEAN_ACTIVATION_VARIANCE = "mean_activation_variance"
    MAX_ACTIVATION_VARIANCE = "max_activation_variance"
    MEAN_ACTIVATION_MAGNITUDE = "mean_activation_magnitude"

    @property
    def needs_data(self) -> bool:
        return self is not SensitivityMetric.WEIGHT_QUANTIZATION_ERROR


class GroupSizeFallback(_StrEnum):
    """What to do with a layer whose input channels the group size does not divide.

    ``adjust``: use the largest power-of-two divisor of its input channels that
    is >= 32 (else the backup precision); ``error``: refuse (NNCF's default);
    ``ignore``: give that layer the backup precision.
    """

    ADJUST = "adjust"
    ERROR = "error"
    IGNORE = "ignore"


MIN_ADJUSTED_GROUP_SIZE = 32
DATA_AWARE_ALGORITHMS = ("awq", "scale_estimation", "gptq", "lora_correction")


@dataclass(frozen=True)
class IgnoredScope:
    """Layers kept out of compression: exact node names, regex patterns over names, op types."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("names", "patterns", "types"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"ignored_scope.{name}={value!r} must be a list of strings.")
            object.__setattr__(self, name, tuple(value))

    @classmethod
    def coerce(cls, value: Any) -> "IgnoredScope":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"names", "patterns", "types", "subgraphs", "validate"})
            if unknown:
                raise ConfigError(
                    f"ignored_scope has unknown keys {unknown}; use 'names', 'patterns' and 'types'."
                )
            return cls(names=value.get("names") or (), patterns=value.get("patterns") or (),
                       types=value.get("types") or ())
        if all(hasattr(value, a) for a in ("names", "patterns", "types")):  # nncf.IgnoredScope
            return cls(names=tuple(value.names), patterns=tuple(value.patterns), types=tuple(value.types))
        raise ConfigError(
            f"ignored_scope={value!r} is not understood; pass IgnoredScope(names=..., patterns=..., types=...) "
            "or a dict with those keys."
        )

    def __bool__(self) -> bool:
        return bool(self.names or self.patterns or self.types)

    def to_dict(self) -> dict[str, list[str]]:
        return {"names": list(self.names), "patterns": list(self.patterns), "types": list(self.types)}
