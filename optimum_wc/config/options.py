"""``WeightCompressionConfig``: the typed options of one compression, validated when built."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .choices import (
    DATA_AWARE_ALGORITHMS,
    BackupMode,
    CompressWeightsMode,
    GroupSizeFallback,
    IgnoredScope,
    SensitivityMetric,
)

_OMITTED_WHEN_OFF = ("gptq_act_order", "gptq_refine_rounds", "mse_clipping", "gptq_asymmetric", "full_range", "mse_grid")
# The dataset of a config read back from a file when it was data (a list, a datasets.Dataset), which is never written.
DATASET_NOT_RECORDED = "<not recorded: calibration data given as data>"


@dataclass(frozen=True)
class WeightCompressionConfig:
    """Weight compression options, with NNCF ``compress_weights`` defaults.

    ``group_size=None`` and ``backup_mode=None`` take the mode's NNCF
    defaults (:attr:`CompressWeightsMode.default_group_size`,
    :attr:`CompressWeightsMode.default_backup`).  ``ratio`` is the share of the
    ratio-defining weight *parameters* (every MatMul but the last, plus
    embeddings and the last MatMul with ``all_layers``) that get the primary
    mode; the rest get the backup mode.  ``codebook``: the sorted look-up
    table of ``mode="codebook"`` (required there), or the starting table of
    ``adaptive_codebook``.  ``gptq_act_order``: GPTQ quantizes the input
    channels most activated first, with static groups (not in NNCF; see
    :func:`optimum_wc.quant.gptq.gptq_quantize_layers`).  ``gptq_refine_rounds``:
    after GPTQ, rounds of coordinate descent on the codes then a least-squares
    refit of the scales, on GPTQ's own layer objective, which neither can
    raise (integer modes; :mod:`optimum_wc.quant.refinement`; not in NNCF).
    ``mse_clipping``: layers rounded to nearest in a 2-4 bit integer mode take
    each group's clipped range with the smallest weight error
    (:mod:`optimum_wc.quant.clipping`; data-free; not in NNCF).
    ``full_range``: layers rounded to nearest in a 2-4 bit *asymmetric* mode
    take the smallest step whose grid (integer zero point) covers each
    group's whole range, so no weight is clipped: round to nearest rounds the
    zero point and so clips one end of the range, pulling its largest weights
    towards zero by up to half a step
    (:func:`optimum_wc.quant.clipping.full_range_params`; data-free; not in NNCF).
    ``mse_grid``: layers rounded to nearest in a 2-4 bit integer mode take,
    per group, the step and zero point with the smallest squared weight
    error among the grids that represent the group's smallest and largest
    weights no worse than round to nearest does
    (:func:`optimum_wc.quant.clipping.mse_grid_params`; data-free; not in NNCF).
    ``gptq_asymmetric``: GPTAQ's asymmetric calibration: each layer quantized
    on the partially compressed model's inputs ``X~`` aims at the *float*
    layer's output on the float model's inputs ``X``, ``min ||X W^T - X~ Q^T||``
    (GPTQ on :func:`optimum_wc.quant.gptq.asymmetric_target`; the float model
    runs beside the compressed one in every layer-wise pass; not in NNCF).
    """

    mode: CompressWeightsMode = CompressWeightsMode.INT8_ASYM
    group_size: int | None = None
    ratio: float = 1.0
    backup_mode: BackupMode | None = None
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
    codebook: tuple[float, ...] | None = None
    gptq_act_order: bool = False
    gptq_refine_rounds: int = 0
    mse_clipping: bool = False
    gptq_asymmetric: bool = False
    full_range: bool = False
    mse_grid: bool = False

    def __post_init__(self) -> None:
        setf = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        setf("mode", CompressWeightsMode.coerce(self.mode, "mode"))
        if self.backup_mode is not None:
            setf("backup_mode", BackupMode.coerce(self.backup_mode, "backup_mode"))
        if self.codebook is not None:
            setf("codebook", _coerce_codebook(self.codebook))
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
        _check_format_options(self)
        _check_data_options(self)

    # -- derived values ---------------------------------------------------

    @property
    def effective_group_size(self) -> int:
        """Group size in use: the given one, or the mode's default (128 for INT4, -1 for INT8, 32 for MX, ...)."""
        if self.group_size is not None:
            return self.group_size
        return self.mode.default_group_size

    @property
    def effective_backup_mode(self) -> BackupMode:
        """Backup precision in use: the given one, or the mode's default (INT8_ASYM; MXFP8 for MX; FP8 for FP4/FP8)."""
        return self.backup_mode if self.backup_mode is not None else self.mode.default_backup

    @property
    def effective_sensitivity_metric(self) -> SensitivityMetric:
        if self.sensitivity_metric is not None:
            return self.sensitivity_metric
        if self.dataset is not None:
            return SensitivityMetric.MAX_ACTIVATION_VARIANCE
        return SensitivityMetric.WEIGHT_QUANTIZATION_ERROR

    @property
    def range_rule(self) -> str | None:
        """How layers rounded to nearest choose their range: ``"mse"``, ``"full"``, ``"grid"`` or None (RTN's own)."""
        return "mse" if self.mse_clipping else "full" if self.full_range else "grid" if self.mse_grid else None

    @property
    def data_aware_algorithms(self) -> tuple[str, ...]:
        """The data-aware algorithms switched on, in :data:`DATA_AWARE_ALGORITHMS` order."""
        return tuple(name for name in DATA_AWARE_ALGORITHMS if getattr(self, name))

    @property
    def sensitivity_needs_data(self) -> bool:
        """Mixed precision is ranked by a metric computed on activations."""
        return not self.mode.is_int8 and self.ratio < 1 and self.effective_sensitivity_metric.needs_data

    @property
    def codebook_needs_data(self) -> bool:
        """An adaptive codebook weighs each input channel by its activations (with a dataset; else by the weights only)."""
        return self.mode is CompressWeightsMode.ADAPTIVE_CODEBOOK and self.dataset is not None

    @property
    def needs_data(self) -> bool:
        """Some option of this config reads calibration data."""
        return bool(self.data_aware_algorithms) or self.sensitivity_needs_data or self.codebook_needs_data

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
            elif f.name == "codebook" and value is not None:
                value = list(value)
            elif f.name == "dataset" and not isinstance(value, (str, type(None))):
                value = str(value) if isinstance(value, Path) else None
            elif f.name in _OMITTED_WHEN_OFF and not value:
                continue  # options added later: off, they leave the config (and the IR's rt_info) as it was
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WeightCompressionConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a compression config must be a dict of options, not a {type(data).__name__}; "
                              "write a JSON object such as {\"mode\": \"int4_asym\"}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} in the compression config; allowed: {sorted(known)}. "
                "For an optimum-intel config (bits, sym, ...) use WeightCompressionConfig.from_optimum()."
            )
        return cls(**dict(data))

    @classmethod
    def from_json(cls, path: str | Path) -> "WeightCompressionConfig":
        """Read an ``optimum_wc_config.json`` (its schema version is checked, see :mod:`optimum_wc.layout`).

        The file records a compression already made: one calibrated on data
        given as such (a list of texts, a ``datasets.Dataset``), written with
        ``dataset: null``, reads back with ``dataset=DATASET_NOT_RECORDED``
        (compressing again with it fails, naming it: pass the data).
        """
        from ..layout import read_config_file  # (on use: `import optimum_wc` loads only the config and errors)

        try:
            data = read_config_file(Path(path))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is not a JSON compression config ({exc}); write a JSON object of options, "
                              "such as the optimum_wc_config.json an export writes.") from exc
        if data.get("dataset") is None:
            try:
                return cls.from_dict(data)
            except ConfigError:  # a data-aware option without its data: that data was not written
                data = {**data, "dataset": DATASET_NOT_RECORDED}
        return cls.from_dict(data)

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
        from .optimum import optimum_dict_to_kwargs

        return cls(**optimum_dict_to_kwargs(dict(config)))

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
    if not c.mode.is_int8:
        return
    fix = f"use an INT4 mode or drop the option ({c.mode.value} compresses every layer per output channel)"
    if c.backup_mode is not None:
        raise ConfigError(f"backup_mode={c.backup_mode.value} is not allowed with mode={c.mode.value}: every layer "
                          f"is already 8-bit; {fix}.")
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


def _coerce_codebook(value: Any) -> tuple[float, ...]:
    """A codebook as a tuple of floats: 1-D, at least two entries, strictly increasing, at most 256 entries."""
    try:
        values = tuple(float(v) for v in (value.tolist() if hasattr(value, "tolist") else value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"codebook={value!r} must be a sorted 1-D list of numbers, e.g. [-1.0, -0.5, 0.0, 0.5, 1.0].") from exc
    if len(values) < 2:
        raise ConfigError(f"codebook={list(values)} needs at least two distinct values, e.g. [-1.0, 0.0, 1.0].")
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ConfigError(f"codebook={list(values)} must be sorted ascending with distinct values; sort it and drop repeats.")
    if len(values) > 256 or not all(v == v and abs(v) != float("inf") for v in values):
        raise ConfigError(f"codebook has {len(values)} entries; use 2 to 256 finite values (4-bit indices up to 16, "
                          "8-bit up to 256).")
    return values


def _check_format_options(c: WeightCompressionConfig) -> None:
    """Options that only some formats take: codebooks, and the data-aware algorithms NNCF refuses for FP/MX formats."""
    if c.mode is CompressWeightsMode.CODEBOOK and c.codebook is None:
        raise ConfigError("mode=codebook needs codebook=[...] (a sorted list of values, e.g. 16 for 4-bit indices); "
                          "or use mode='cb4' for the fixed 16-value table.")
    if c.codebook is not None and c.mode not in (CompressWeightsMode.CODEBOOK, CompressWeightsMode.ADAPTIVE_CODEBOOK):
        raise ConfigError(f"codebook=... is not used by mode={c.mode.value}; set mode='codebook' (or "
                          "'adaptive_codebook'), or drop codebook.")
    fixed = c.mode.fixed_group_size
    if fixed is not None and c.group_size not in (None, fixed):
        raise ConfigError(f"group_size={c.group_size} is not allowed with mode={c.mode.value}: the format uses groups "
                          f"of {fixed}; set group_size={fixed} or leave it unset.")
    if c.mode.is_int8 or c.mode.allows_data_aware:
        return
    for name in DATA_AWARE_ALGORITHMS:
        if getattr(c, name):
            raise ConfigError(f"{name}=True is not available with mode={c.mode.value} (NNCF has no data-aware "
                              "algorithm for the FP4/FP8/MX/NVFP4 formats); set it to False, or use an integer, "
                              "nf4 or codebook mode.")


def _check_data_options(c: WeightCompressionConfig) -> None:
    if c.gptq and c.lora_correction:
        raise ConfigError("gptq=True and lora_correction=True cannot be combined; set one of them to False.")
    if not isinstance(c.gptq_act_order, bool):
        raise ConfigError(f"gptq_act_order={c.gptq_act_order!r} must be True or False.")
    if c.gptq_act_order and not c.gptq:
        raise ConfigError("gptq_act_order=True orders GPTQ's columns, but gptq=False; set gptq=True as well.")
    if not isinstance(c.gptq_asymmetric, bool):
        raise ConfigError(f"gptq_asymmetric={c.gptq_asymmetric!r} must be True or False.")
    if c.gptq_asymmetric and not c.gptq:
        raise ConfigError("gptq_asymmetric=True changes GPTQ's target, but gptq=False; set gptq=True as well.")
    if not isinstance(c.mse_clipping, bool):
        raise ConfigError(f"mse_clipping={c.mse_clipping!r} must be True or False.")
    if c.mse_clipping and not (c.mode.is_integer and c.mode.num_bits <= 4):
        raise ConfigError(f"mse_clipping=True clips integer grids of 2-4 bits; mode={c.mode.value} has none: set "
                          "mse_clipping=False or use int4_asym, int4_sym, int3_sym or int2_sym.")
    if not isinstance(c.full_range, bool):
        raise ConfigError(f"full_range={c.full_range!r} must be True or False.")
    if c.full_range and not (c.mode.is_integer and c.mode.is_asym and c.mode.num_bits <= 4):
        raise ConfigError(f"full_range=True chooses the zero point of asymmetric 2-4 bit grids; mode={c.mode.value} has "
                          "none: set full_range=False or use int4_asym.")
    if c.full_range and c.mse_clipping:
        raise ConfigError("full_range=True keeps each group's whole range and mse_clipping=True shrinks it; "
                          "set one of them to False.")
    if not isinstance(c.mse_grid, bool):
        raise ConfigError(f"mse_grid={c.mse_grid!r} must be True or False.")
    if c.mse_grid and not (c.mode.is_integer and c.mode.num_bits <= 4):
        raise ConfigError(f"mse_grid=True searches integer grids of 2-4 bits; mode={c.mode.value} has none: set "
                          "mse_grid=False or use int4_asym, int4_sym, int3_sym or int2_sym.")
    others = [name for name in ("mse_clipping", "full_range") if getattr(c, name)]
    if c.mse_grid and others:
        raise ConfigError(f"mse_grid=True and {others[0]}=True each choose every group's range; set one of them to False.")
    rounds = c.gptq_refine_rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"gptq_refine_rounds={rounds!r} must be an integer >= 0 (rounds of refinement after GPTQ), "
                          "e.g. 3.")
    if rounds and not c.gptq:
        raise ConfigError(f"gptq_refine_rounds={rounds} refines GPTQ's result, but gptq=False; set gptq=True as well.")
    if rounds and not c.mode.is_integer:
        raise ConfigError(f"gptq_refine_rounds={rounds} moves integer codes; mode={c.mode.value} is not an integer "
                          "mode: set gptq_refine_rounds=0.")
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
