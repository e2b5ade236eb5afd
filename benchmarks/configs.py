"""The named compression configs of the benchmark and the targets they are judged by.

One :class:`BenchConfig` describes a compression setting once and turns it
into both engines' arguments, so the two are always given the same thing:

* :meth:`BenchConfig.ours` -> ``optimum_wc.WeightCompressionConfig``;
* :meth:`BenchConfig.nncf_kwargs` -> keyword arguments of ``nncf.compress_weights``.

Extension point for data-aware configs: add a ``BenchConfig`` with
``data_aware=("awq", "scale_estimation", ...)`` and/or a data-based
``sensitivity_metric`` to :data:`DATA_AWARE_CONFIGS`.  The runner then
tokenises the ``--calib-text`` files once, the worker builds the same
calibration inputs for both engines (:func:`benchmarks.worker.calibration_inputs`)
and passes them as ``dataset``; the time target of such a config is
:data:`TIME_TARGET_DATA_AWARE`.  Data-aware configs are in the default set; ``--configs`` picks a subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Targets, as ratios ours / NNCF.
TIME_TARGET_DATA_FREE = 0.25  # compression seconds <= 0.25x NNCF
TIME_TARGET_DATA_AWARE = 0.5  # compression seconds <= 0.5x NNCF
RSS_TARGET = 1.0  # peak RSS <= 1.0x
SIZE_TARGET = 1.0  # openvino_model.bin size <= 1.0x
PPL_TARGET = 1.002  # perplexity <= 1.002x
SPEED_TARGET = 0.97  # generation tokens/s >= 0.97x


@dataclass(frozen=True)
class BenchConfig:
    """One compression setting, given identically to both engines."""

    name: str
    mode: str  # any CompressWeightsMode value
    group_size: int | None = None  # not for INT8 (None: the mode's default)
    ratio: float = 1.0  # INT4 only
    all_layers: bool = False  # INT4 only
    data_aware: tuple[str, ...] = ()  # e.g. ("awq", "scale_estimation"); needs --calib-text
    sensitivity_metric: str | None = None  # e.g. "max_activation_variance"; needs --calib-text
    subset_size: int = 128  # calibration samples, for data-aware configs
    codebook: tuple[float, ...] | None = None  # mode "codebook" only
    data: bool = False  # give the dataset even without a data-aware algorithm (adaptive codebook)
    ours_options: tuple[tuple[str, Any], ...] = ()  # options NNCF lacks, (name, value): NNCF runs without them

    @property
    def is_int8(self) -> bool:
        return self.mode.startswith("int8")

    @property
    def needs_data(self) -> bool:
        return bool(self.data_aware) or self.data or self.sensitivity_metric not in (None, "weight_quantization_error")

    @property
    def time_target(self) -> float:
        return TIME_TARGET_DATA_AWARE if self.needs_data else TIME_TARGET_DATA_FREE

    def describe(self) -> str:
        """A short human description, e.g. ``int4_asym, group 128, ratio 0.8``."""
        parts = [self.mode]
        if not self.is_int8:
            parts += [f"group {self.group_size if self.group_size is not None else 'default'}", f"ratio {self.ratio}"]
            if self.all_layers:
                parts.append("all layers")
        parts += list(self.data_aware) + [f"{k}={v} (ours only)" for k, v in self.ours_options]
        if self.sensitivity_metric:
            parts.append(self.sensitivity_metric)
        return ", ".join(parts)

    def ours(self, dataset: Any = None):
        """The ``optimum_wc.WeightCompressionConfig`` of this setting."""
        from optimum_wc import WeightCompressionConfig

        kwargs: dict[str, Any] = {"mode": self.mode}
        if not self.is_int8:
            kwargs.update(group_size=self.group_size, ratio=self.ratio, all_layers=self.all_layers)
        for option in self.data_aware:
            kwargs[option] = True
        kwargs.update(self.ours_options)
        if self.sensitivity_metric:
            kwargs["sensitivity_metric"] = self.sensitivity_metric
        if self.codebook is not None:
            kwargs["codebook"] = self.codebook
        if self.needs_data:
            kwargs["subset_size"] = self.subset_size
            kwargs["dataset"] = dataset
        return WeightCompressionConfig(**kwargs)

    def nncf_kwargs(self, dataset: Any = None) -> dict[str, Any]:
        """Keyword arguments of ``nncf.compress_weights`` for this setting.

        INT8 modes get only ``mode``; INT4 modes also get ``ratio``,
        ``group_size``, ``all_layers`` and the ADJUST group-size fallback,
        which is our engine's default.
        """
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        import numpy as np

        kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode(self.mode)}
        if not self.is_int8:
            fixed_group = self.mode in ("mxfp4", "mxfp8_e4m3", "nvfp4")  # NNCF refuses ADJUST for these
            kwargs.update(
                ratio=self.ratio,
                group_size=self.group_size,
                all_layers=self.all_layers,
                advanced_parameters=AdvancedCompressionParameters(
                    group_size_fallback_mode=GroupSizeFallbackMode.ERROR if fixed_group else GroupSizeFallbackMode.ADJUST,
                    codebook=None if self.codebook is None else np.array(self.codebook, dtype=np.float32),
                ),
            )
        for option in self.data_aware:
            kwargs[option] = True
        if self.sensitivity_metric:
            kwargs["sensitivity_metric"] = nncf.SensitivityMetric(self.sensitivity_metric)
        if self.needs_data:
            kwargs["subset_size"] = self.subset_size
            kwargs["dataset"] = nncf.Dataset(dataset)
        return kwargs


DATA_FREE_CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("int8_asym", "int8_asym"),
    BenchConfig("int8_sym", "int8_sym"),
    BenchConfig("int4_asym_g128_r1.0", "int4_asym", group_size=128, ratio=1.0),
    BenchConfig("int4_asym_g128_r0.8", "int4_asym", group_size=128, ratio=0.8),
    BenchConfig("int4_sym_g64_r0.8", "int4_sym", group_size=64, ratio=0.8),
    BenchConfig("int4_sym_g128_r1.0", "int4_sym", group_size=128, ratio=1.0),
    BenchConfig("int4_asym_g64_r1.0_all_layers", "int4_asym", group_size=64, ratio=1.0, all_layers=True),
    # issue 15: data-free clipping (ours only; NNCF's side is its round to nearest)
    BenchConfig("int4_asym_g128_r1.0_clip", "int4_asym", group_size=128, ratio=1.0, ours_options=(("mse_clipping", True),)),
    BenchConfig("int4_sym_g128_r1.0_clip", "int4_sym", group_size=128, ratio=1.0, ours_options=(("mse_clipping", True),)),
    # issue 15: data-free full range (ours only; NNCF's side is its round to nearest)
    BenchConfig("int4_asym_g128_r1.0_full", "int4_asym", group_size=128, ratio=1.0, ours_options=(("full_range", True),)),
    BenchConfig("int4_asym_g64_r1.0_full", "int4_asym", group_size=64, ratio=1.0, ours_options=(("full_range", True),)),
    BenchConfig("int4_asym_g32_r1.0_full", "int4_asym", group_size=32, ratio=1.0, ours_options=(("full_range", True),)),
    # issue 15: data-free MSE grid (ours only; NNCF's side is its round to nearest)
    BenchConfig("int4_asym_g128_r1.0_grid", "int4_asym", group_size=128, ratio=1.0, ours_options=(("mse_grid", True),)),
    BenchConfig("int4_sym_g128_r1.0_grid", "int4_sym", group_size=128, ratio=1.0, ours_options=(("mse_grid", True),)),
    BenchConfig("int4_asym_g64_r1.0_grid", "int4_asym", group_size=64, ratio=1.0, ours_options=(("mse_grid", True),)),
)

# Every other NNCF format, data-free, at NNCF's default group size and backup precision (issue 13).
E2M1_TABLE = (-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FORMAT_CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("int3_sym_g128", "int3_sym", group_size=128),
    BenchConfig("int2_sym_g128", "int2_sym", group_size=128),
    BenchConfig("nf4_g128", "nf4", group_size=128),
    BenchConfig("fp4_g64", "fp4", group_size=64),  # (g128: NNCF fails on the 576-wide embedding, FP8 backup)
    BenchConfig("fp8_e4m3_g64", "fp8_e4m3", group_size=64),
    BenchConfig("mxfp4", "mxfp4"),
    BenchConfig("mxfp8_e4m3", "mxfp8_e4m3"),
    BenchConfig("nvfp4", "nvfp4"),
    BenchConfig("cb4", "cb4"),
    BenchConfig("codebook_e2m1_g128", "codebook", group_size=128, codebook=E2M1_TABLE),
)

# Data-aware configs (issue 5): int4_asym g128 r1.0 unless noted; calibrated on --calib-text.
DATA_AWARE_CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("int4_asym_g128_r0.8_hessian", "int4_asym", group_size=128, ratio=0.8,
                sensitivity_metric="hessian_input_activation"),
    BenchConfig("int4_asym_g128_awq_se", "int4_asym", group_size=128, data_aware=("awq", "scale_estimation")),
    BenchConfig("int4_asym_g128_gptq", "int4_asym", group_size=128, data_aware=("gptq",)),
    BenchConfig("int4_asym_g128_gptq_se", "int4_asym", group_size=128, data_aware=("gptq", "scale_estimation")),
    BenchConfig("int4_asym_g128_lora", "int4_asym", group_size=128, data_aware=("lora_correction",)),
    # issue 15: GPTQ with act-order (static groups); NNCF's side is its GPTQ without it
    BenchConfig("int4_asym_g128_gptq_ao", "int4_asym", group_size=128, data_aware=("gptq",),
                ours_options=(("gptq_act_order", True),)),
    BenchConfig("int4_asym_g128_gptq_se_ao", "int4_asym", group_size=128, data_aware=("gptq", "scale_estimation"),
                ours_options=(("gptq_act_order", True),)),
    BenchConfig("int4_asym_g128_gptq_se_ao_r3", "int4_asym", group_size=128, data_aware=("gptq", "scale_estimation"),
                ours_options=(("gptq_act_order", True), ("gptq_refine_rounds", 3))),
    # GPTAQ (issue 15): gptq_asymmetric, the float model run beside the compressed one
    BenchConfig("int4_asym_g128_gptq_se_ao_aq", "int4_asym", group_size=128, data_aware=("gptq", "scale_estimation"),
                ours_options=(("gptq_act_order", True), ("gptq_asymmetric", True))),
    BenchConfig("int4_asym_g128_gptq_se_ao_aq_r3", "int4_asym", group_size=128,
                data_aware=("gptq", "scale_estimation"),
                ours_options=(("gptq_act_order", True), ("gptq_asymmetric", True), ("gptq_refine_rounds", 3))),
    BenchConfig("int4_asym_g128_awq_gptq_se", "int4_asym", group_size=128, data_aware=("awq", "gptq", "scale_estimation")),
    BenchConfig("int4_asym_g128_awq_gptq_se_ao", "int4_asym", group_size=128,
                data_aware=("awq", "gptq", "scale_estimation"), ours_options=(("gptq_act_order", True),)),
    BenchConfig("nf4_g128_awq_se", "nf4", group_size=128, data_aware=("awq", "scale_estimation")),
    BenchConfig("cb4_awq_se", "cb4", data_aware=("awq", "scale_estimation")),
    BenchConfig("adaptive_codebook", "adaptive_codebook", data=True),
)
CONFIGS: dict[str, BenchConfig] = {c.name: c for c in DATA_FREE_CONFIGS + FORMAT_CONFIGS + DATA_AWARE_CONFIGS}
DEFAULT_CONFIGS: tuple[str, ...] = tuple(CONFIGS)


def select_configs(names: str | None) -> list[BenchConfig]:
    """The configs named in a comma-separated list (``None`` or ``all``: the default set)."""
    if not names or names.strip() == "all":
        return [CONFIGS[n] for n in DEFAULT_CONFIGS]
    chosen = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; known configs: {', '.join(CONFIGS)}")
        chosen.append(CONFIGS[name])
    return chosen
