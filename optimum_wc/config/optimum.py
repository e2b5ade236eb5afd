"""Conversion of an optimum-intel ``OVWeightQuantizationConfig`` (or its dict) into our config's keyword arguments."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .choices import WEIGHT_FORMAT_MODES, mode_of_weight_format


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


def optimum_dict_to_kwargs(d: dict[str, Any]) -> dict[str, Any]:
    dtype = (d.get("dtype") or d.get("weight_format") or "").lower()
    bits = d.get("bits")
    if bits is None:
        bits = 8 if dtype in ("", "int8") or dtype.startswith("int8") else 4
    if dtype and dtype not in WEIGHT_FORMAT_MODES:
        raise ConfigError(f"dtype={dtype!r} from the optimum-intel config is not supported; use one of "
                          f"{', '.join(WEIGHT_FORMAT_MODES)}.")
    if bits not in (4, 8) and dtype in ("", "int4", "int8"):
        raise ConfigError(f"bits={bits!r} from the optimum-intel config is not supported; use 4 or 8.")
    mode = mode_of_weight_format(dtype if dtype and dtype not in ("int4", "int8") else f"int{bits}", bool(d.get("sym")))
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
    if mode.is_int8:  # optimum-intel may carry 4-bit defaults it ignores for 8 bits
        if kw.get("group_size") in (None, -1):
            kw.pop("group_size", None)
    return kw
