"""The typed configuration of weight compression.

``WeightCompressionConfig`` carries the options of NNCF's ``compress_weights``
with the same defaults, is validated when it is built (each message names the
field, the value and the fix) and round-trips through JSON.  It imports
nothing heavy, so the CLI and config handling stay fast.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = [
    "BackupMode",
    "CompressWeightsMode",
    "GroupSizeFallback",
    "IgnoredScope",
    "SensitivityMetric",
    "WeightCompressionConfig",
]


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
    """Primary precision of the compressed weights."""

    INT8_ASYM = "int8_asym"
    INT8_SYM = "int8_sym"
    INT4_SYM = "int4_sym"
    INT4_ASYM = "int4_asym"

    @property
    def num_bits(self) -> int:
        return 4 if self in (CompressWeightsMode.INT4_SYM, CompressWeightsMode.INT4_ASYM) else 8

    @property
    def is_asym(self) -> bool:
        return self in (CompressWeightsMode.INT8_ASYM, CompressWeightsMode.INT4_ASYM)


class BackupMode(_StrEnum):
    """Precision of the weights that do not get the primary (4-bit) mode."""

    INT8_ASYM = "int8_asym"
    INT8_SYM = "int8_sym"
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
            if not all(isinstance(v, str) for v in value):
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
            return cls(
                names=tuple(value.get("names") or ()),
                patterns=tuple(value.get("patterns") or ()),
                types=tuple(value.get("types") or ()),
            )
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


@dataclass(frozen=True)
class WeightCompressionConfig:
    """Weight compression options, with NNCF ``compress_weights`` defaults.

    ``group_size=None`` means 128 for INT4 modes and -1 (one scale per output
    channel) for INT8 modes.  ``ratio`` is the share of the ratio-defining
    weight *parameters* (every MatMul but the last, plus embeddings and the
    last MatMul with ``all_layers``) that get the 4-bit mode; the rest get
    ``backup_mode``.
    """

    mode: CompressWeightsMode = CompressWeightsMode.INT8_ASYM
    group_size: int | None = None
    ratio: float = 1.0
    backup_mode: BackupMode = BackupMode.INT8_ASYM
    sensitivity_metric: SensitivityMetric | None = None
    all_layers: bool = False
    ignored_scope: IgnoredScope = field(default_factory=IgnoredScope)
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    lora_correction: bool = False
    dataset: Any = None
    subset_size: int = 128
    group_size_fallback: GroupSizeFallback = GroupSizeFallback.ADJUST
    sample_length: int = 128
    lora_rank: int = 8

    def __post_init__(self) -> None:
        setf = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        setf("mode", CompressWeightsMode.coerce(self.mode, "mode"))
        setf("backup_mode", BackupMode.coerce(self.backup_mode, "backup_mode"))
        setf("group_size_fallback", GroupSizeFallback.coerce(self.group_size_fallback, "group_size_fallback"))
        if self.sensitivity_metric is not None:
            setf("sensitivity_metric", SensitivityMetric.coerce(self.sensitivity_metric, "sensitivity_metric"))
        setf("ignored_scope", IgnoredScope.coerce(self.ignored_scope))
        for name in ("all_layers",) + DATA_AWARE_ALGORITHMS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} must be True or False.")
        _check_numbers(self)
        _check_int8_options(self)
        _check_data_options(self)

    # -- derived values ---------------------------------------------------

    @property
    def effective_group_size(self) -> int:
        """Group size in use: the given one, or 128 for INT4 and -1 for INT8."""
        if self.group_size is not None:
            return self.group_size
        return 128 if self.mode.num_bits == 4 else -1

    @property
    def effective_sensitivity_metric(self) -> SensitivityMetric:
        if self.sensitivity_metric is not None:
            return self.sensitivity_metric
        if self.dataset is not None:
            return SensitivityMetric.MAX_ACTIVATION_VARIANCE
        return SensitivityMetric.WEIGHT_QUANTIZATION_ERROR

    @property
    def data_aware_algorithms(self) -> tuple[str, ...]:
        """The data-aware algorithms switched on, in :data:`DATA_AWARE_ALGORITHMS` order."""
        return tuple(name for name in DATA_AWARE_ALGORITHMS if getattr(self, name))

    @property
    def sensitivity_needs_data(self) -> bool:
        """Mixed precision is ranked by a metric computed on activations."""
        return self.mode.num_bits == 4 and self.ratio < 1 and self.effective_sensitivity_metric.needs_data

    @property
    def needs_data(self) -> bool:
        """Some option of this config reads calibration data."""
        return bool(self.data_aware_algorithms) or self.sensitivity_needs_data

    # -- serialisation ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict(to_dict())`` gives an equal config.

        A dataset that is not a name or path (a list, a ``datasets.Dataset``)
        is stored as ``None``: data is never written into a config file.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, IgnoredScope):
                value = value.to_dict()
            elif f.name == "dataset" and not isinstance(value, (str, type(None))):
                value = str(value) if isinstance(value, Path) else None
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WeightCompressionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} in the compression config; allowed: {sorted(known)}. "
                "For an optimum-intel config (bits, sym, ...) use WeightCompressionConfig.from_optimum()."
            )
        return cls(**dict(data))

    @classmethod
    def from_json(cls, path: str | Path) -> "WeightCompressionConfig":
        """Read an ``optimum_wc_config.json`` (its schema version is checked, see :mod:`optimum_wc.layout`)."""
        from .layout import read_config_file  # (on use: `import optimum_wc` loads only the config and errors)

        return cls.from_dict(read_config_file(Path(path)))

    @classmethod
    def from_optimum(cls, config: Any) -> "WeightCompressionConfig":
        """Convert an optimum-intel ``OVWeightQuantizationConfig`` (or its dict) into ours."""
        if not isinstance(config, Mapping):
            if not hasattr(config, "to_dict"):
                raise ConfigError(
                    f"cannot convert {type(config).__name__} to WeightCompressionConfig; pass an "
                    "OVWeightQuantizationConfig or a dict with 'bits', 'sym', 'group_size', ..."
                )
            config = config.to_dict()
        return cls(**_optimum_dict_to_kwargs(dict(config)))

    @classmethod
    def coerce(cls, value: Any) -> "WeightCompressionConfig":
        """Accept our config, its dict, or an optimum-intel config or dict."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            if set(value) <= known and "bits" not in value:
                return cls.from_dict(value)
        return cls.from_optimum(value)


# -- validation: small checks, each with the fix in its message ------------


def _check_numbers(c: WeightCompressionConfig) -> None:
    if isinstance(c.ratio, bool) or not isinstance(c.ratio, (int, float)) or not 0.0 <= c.ratio <= 1.0:
        raise ConfigError(f"ratio={c.ratio!r} must be a number in [0, 1], e.g. ratio=0.8.")
    if c.group_size is not None:
        if isinstance(c.group_size, bool) or not isinstance(c.group_size, int):
            raise ConfigError(f"group_size={c.group_size!r} must be an integer: -1 (per channel) or > 0, e.g. 128.")
        if c.group_size == 0 or c.group_size < -1:
            raise ConfigError(
                f"group_size={c.group_size} is not allowed; use -1 (one scale per output channel) "
                "or a positive size such as 32, 64 or 128."
            )
    if isinstance(c.subset_size, bool) or not isinstance(c.subset_size, int) or c.subset_size < 1:
        raise ConfigError(f"subset_size={c.subset_size!r} must be a positive integer, e.g. 128.")
    if isinstance(c.sample_length, bool) or not isinstance(c.sample_length, int) or c.sample_length < 8:
        raise ConfigError(f"sample_length={c.sample_length!r} must be an integer >= 8 (tokens per calibration sample), e.g. 128.")
    if isinstance(c.lora_rank, bool) or not isinstance(c.lora_rank, int) or c.lora_rank < 1:
        raise ConfigError(f"lora_rank={c.lora_rank!r} must be an integer >= 1 (rank of the LoRA correction adapters), e.g. 8.")


def _check_int8_options(c: WeightCompressionConfig) -> None:
    if c.mode.num_bits != 8:
        return
    fix = f"use an INT4 mode or drop the option ({c.mode.value} compresses every layer per output channel)"
    if c.group_size not in (None, -1):
        raise ConfigError(f"group_size={c.group_size} is not allowed with mode={c.mode.value}; set group_size=-1 or None, or {fix}.")
    if c.ratio != 1:
        raise ConfigError(f"ratio={c.ratio} is not allowed with mode={c.mode.value}; set ratio=1.0, or {fix}.")
    if c.all_layers:
        raise ConfigError(f"all_layers=True is not allowed with mode={c.mode.value}; INT8 already covers all layers, {fix}.")
    if c.sensitivity_metric is not None:
        raise ConfigError(
            f"sensitivity_metric={c.sensitivity_metric.value} is not allowed with mode={c.mode.value}: "
            f"there is no mixed precision to rank; {fix}."
        )
    for name in DATA_AWARE_ALGORITHMS:
        if getattr(c, name):
            raise ConfigError(f"{name}=True is not allowed with mode={c.mode.value}; it is a 4-bit algorithm, {fix}.")


def _check_data_options(c: WeightCompressionConfig) -> None:
    if c.gptq and c.lora_correction:
        raise ConfigError("gptq=True and lora_correction=True cannot be combined; set one of them to False.")
    if c.dataset is not None:
        return
    for name in DATA_AWARE_ALGORITHMS:
        if getattr(c, name):
            raise ConfigError(f"{name}=True needs calibration data; set dataset=... (a name, a text file or a list of texts), or {name}=False.")
    if c.sensitivity_metric is not None and c.sensitivity_metric.needs_data:
        raise ConfigError(
            f"sensitivity_metric={c.sensitivity_metric.value} needs calibration data; set dataset=..., "
            "or use sensitivity_metric='weight_quantization_error'."
        )


# -- optimum-intel conversion ----------------------------------------------

_OPTIMUM_SAME_NAME_KEYS = (
    "group_size", "ratio", "all_layers", "sensitivity_metric", "dataset", "ignored_scope",
    "scale_estimation", "gptq", "lora_correction", "group_size_fallback",
)
# Keys of optimum-intel's config that we translate, or that only concern its own pipeline.
_OPTIMUM_KEYS = set(_OPTIMUM_SAME_NAME_KEYS) | {
    "bits", "sym", "dtype", "weight_format", "quant_method", "awq", "num_samples", "backup_precision",
    "tokenizer", "processor", "trust_remote_code", "statistics_path", "dq_group_size",
    "tokenizer_kwargs", "processor_kwargs",
}


def _optimum_dict_to_kwargs(d: dict[str, Any]) -> dict[str, Any]:
    dtype = (d.get("dtype") or d.get("weight_format") or "").lower()
    bits = d.get("bits")
    if bits is None:
        bits = 4 if dtype.startswith("int4") else 8
    if dtype and dtype not in ("int4", "int8"):
        raise ConfigError(f"dtype={dtype!r} from the optimum-intel config is not supported; use 'int4' or 'int8'.")
    if bits not in (4, 8):
        raise ConfigError(f"bits={bits!r} from the optimum-intel config is not supported; use 4 or 8.")
    mode = f"int{bits}_{'sym' if d.get('sym') else 'asym'}"
    kw: dict[str, Any] = {"mode": mode}
    quant_method = str(getattr(d.get("quant_method"), "value", d.get("quant_method")) or "default").lower()
    for key in _OPTIMUM_SAME_NAME_KEYS:
        if d.get(key) is not None:
            kw[key] = d[key]
    if quant_method == "awq" or d.get("awq"):
        kw["awq"] = True
    if d.get("num_samples") is not None:
        kw["subset_size"] = d["num_samples"]
    if d.get("backup_precision") is not None:
        kw["backup_mode"] = d["backup_precision"]
    unknown = sorted(k for k, v in d.items() if k not in _OPTIMUM_KEYS and v not in (None, False, {}, []))
    if unknown:
        raise ConfigError(f"optimum-intel option(s) {unknown} have no equivalent in WeightCompressionConfig; remove them.")
    if bits == 8:  # optimum-intel may carry 4-bit defaults it ignores for 8 bits
        if kw.get("group_size") in (None, -1):
            kw.pop("group_size", None)
    return kw
