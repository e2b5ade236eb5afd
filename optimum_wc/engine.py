"""``compress_model``: the one entry point of our compression engine.

Objective: replace each float weight ``W`` of the model's linear and
embedding layers by integer codes ``q`` with scales ``s`` (and zero points
``z``) such that ``s * (q - z)`` is the round-to-nearest approximation of
``W`` on the chosen grid, with the per-layer precision chosen by
:mod:`optimum_wc.planning`.  Weights are processed one at a time and each
float constant is released as soon as it is replaced.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Sequence

from .config import WeightCompressionConfig
from .errors import NotYetSupportedError
from .graph import find_weight_sites, read_weight, replace_with_compressed, write_rt_info
from .lowering import int8_error_sensitivity, quantize
from .planning import LayerPlan, plan_layers

logger = logging.getLogger("optimum_wc")

__all__ = ["compress_model", "bitwidth_table"]


def _check_supported(config: WeightCompressionConfig, dataset: Any) -> None:
    needs_data = config.data_aware_options
    if needs_data:
        raise NotYetSupportedError(
            f"data-aware compression ({', '.join(needs_data)}) is not implemented in this version of optimum-wc; "
            "use data-free options (awq/scale_estimation/gptq/lora_correction=False and "
            "sensitivity_metric='weight_quantization_error' or ratio=1.0) until it lands."
        )
    if dataset is not None or config.dataset is not None:
        logger.info("Calibration data was given but this data-free config does not use it.")


def compress_model(ov_model, config: WeightCompressionConfig | dict | Any = None, dataset: Any = None, *, progress: bool = False):
    """Compress the weights of ``ov_model`` (an ``openvino.Model``) in place and return it.

    ``config`` is a :class:`WeightCompressionConfig`, its dict, or an
    optimum-intel ``OVWeightQuantizationConfig``.  The chosen mode and group
    size of every layer are written to the model's ``rt_info`` and logged as
    a bit-width distribution table.
    """
    config = WeightCompressionConfig() if config is None else WeightCompressionConfig.coerce(config)
    _check_supported(config, dataset)
    start = time.perf_counter()
    sites, skipped = find_weight_sites(ov_model)
    for op_name, reason in skipped:
        logger.info("Not compressed: %s (%s)", op_name, reason)

    def sensitivity(site) -> float:
        return int8_error_sensitivity(read_weight(site), site.reduction_axis)

    plans = plan_layers(sites, config, sensitivity)
    adjusted: dict[str, list[str]] = {}
    for p in plans:
        if p.note.startswith("group size adjusted"):
            adjusted.setdefault(f"{p.note} ({p.site.in_channels} input channels)", []).append(p.site.op_names[0])
    for note, names in adjusted.items():
        logger.info("%s for %d layer(s): %s", note.capitalize(), len(names), ", ".join(names))

    records = []
    iterator = plans
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(plans, desc="Compressing weights", unit="layer")
    for p in iterator:
        records.append(_layer_record(p))
        if p.mode is None:
            continue
        cw = quantize(read_weight(p.site), p.mode, p.group_size, p.site.reduction_axis)
        records[-1]["relative_error"] = round(cw.relative_error, 6)
        replace_with_compressed(p.site, cw)
        del cw

    write_rt_info(ov_model, config.to_dict(), records)
    logger.info("Weight compression took %.2f s.\n%s", time.perf_counter() - start, bitwidth_table(records))
    return ov_model


def _layer_record(p: LayerPlan) -> dict[str, Any]:
    return {
        "name": p.site.name,
        "ops": list(p.site.op_names),
        "kind": p.site.kind,
        "shape": list(p.site.shape),
        "num_weights": p.site.num_weights,
        "mode": p.mode.value if p.mode else "float",
        "group_size": p.group_size if p.mode else None,
        "ratio_defining": p.ratio_defining,
        "note": p.note,
        "relative_error": None if p.mode else 0.0,
    }


def _label(record: dict[str, Any]) -> str:
    if record["mode"] == "float":
        return "float"
    gs = record["group_size"]
    return f"{record['mode']}, {'per-channel' if gs == -1 else f'group size {gs}'}"


def bitwidth_table(records: Sequence[dict[str, Any]]) -> str:
    """NNCF-style table: share of parameters (and layers) per mode, overall and among ratio-defining weights."""
    def bits(label: str) -> int:
        return 32 if label == "float" else (4 if label.startswith("int4") else 8)

    rows: dict[str, list[list[int]]] = OrderedDict()
    for r in records:
        entry = rows.setdefault(_label(r), [[], []])
        entry[0].append(r["num_weights"])
        if r["ratio_defining"]:
            entry[1].append(r["num_weights"])
    total = sum(r["num_weights"] for r in records) or 1
    total_rd = sum(r["num_weights"] for r in records if r["ratio_defining"]) or 1
    n_layers, n_rd = len(records), sum(1 for r in records if r["ratio_defining"])
    header = ["Weight compression mode", "% all parameters (layers)", "% ratio-defining parameters (layers)"]
    body = [
        [label, f"{100 * sum(a) / total:.0f}% ({len(a)} / {n_layers})", f"{100 * sum(b) / total_rd:.0f}% ({len(b)} / {n_rd})"]
        for label, (a, b) in sorted(rows.items(), key=lambda kv: (bits(kv[0]), kv[0]))
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(3)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join(["Bit-width distribution:", line, fmt(header), line, *map(fmt, body), line])
