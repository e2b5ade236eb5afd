"""``compress_model``: the one entry point of our compression engine.

Objective: replace each float weight ``W`` of the model's linear and
embedding layers by integer codes ``q`` with scales ``s`` (and zero points
``z``) such that ``s * (q - z)`` is the round-to-nearest approximation of
``W`` on the chosen grid, with the per-layer precision chosen by
:mod:`optimum_wc.planning`.  Weights are processed one at a time and each
float constant is released as soon as it is replaced.  Data-aware options
change how a 4-bit layer is approximated: AWQ (float weights edited first),
scale estimation, GPTQ (:mod:`optimum_wc.gptq`) and LoRA correction
(:mod:`optimum_wc.lora_correction`); the last two take each layer's inputs
from the partially compressed model, in topological order.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Sequence

from .config import WeightCompressionConfig
from .errors import NotYetSupportedError
from .awq import apply_awq
from .calibration import prepare_samples
from .graph import (
    activation_source, adapter_input, add_lora_adapter, find_weight_sites, ops_by_name, read_weight, replace_with_compressed,
    topological_positions, write_rt_info,
)
from .gptq import gptq_quantize_layers
from .lora_correction import fit_lora, whitened_factor
from .lowering import dequantize, quantize
from .planning import LayerPlan, plan_layers
from .scale_estimation import estimate_scales
from .sensitivity import sensitivity_function
from .statistics import LayerwiseHessians, collect_statistics
from .threads import in_order

logger = logging.getLogger("optimum_wc")

__all__ = ["compress_model", "bitwidth_table"]


RAW_ROWS = 256  # AWQ / scale estimation: rows of raw activations kept per layer input
GRAM_BLOCK = 128  # scale estimation: exact group Grams for group sizes dividing gcd(channels, 128)
IMPLEMENTED_DATA_AWARE = ("awq", "scale_estimation", "gptq", "lora_correction", "sensitivity_metric=")
SOURCES_PER_PASS = 4  # GPTQ / LoRA correction: activations (layer inputs) whose Hessians one calibration pass collects


def _check_supported(config: WeightCompressionConfig, data: Any) -> None:
    missing = [o for o in config.data_aware_options if not o.startswith(IMPLEMENTED_DATA_AWARE)]
    if missing:
        raise NotYetSupportedError(
            f"{', '.join(missing)} is not implemented in this version of optimum-wc; "
            "use awq, scale_estimation, gptq or lora_correction (or data-free compression) until it lands."
        )
    if data is not None and not config.data_aware_options:
        logger.info("Calibration data was given but this config does not use it (no data-aware option).")


def compress_model(
    ov_model,
    config: WeightCompressionConfig | dict | Any = None,
    dataset: Any = None,
    *,
    tokenizer: Any = None,
    progress: bool = False,
    statistics_path: str | None = None,
):
    """Compress the weights of ``ov_model`` (an ``openvino.Model``) in place and return it.

    ``config`` is a :class:`WeightCompressionConfig`, its dict, or an
    optimum-intel ``OVWeightQuantizationConfig``.  ``dataset`` (else
    ``config.dataset``) is the calibration data of data-aware options; text
    needs ``tokenizer``.  ``statistics_path`` caches activation statistics
    on disk and reuses them for the same model and data.  The chosen mode and
    group size of every layer are written to the model's ``rt_info`` and
    logged as a bit-width distribution table.
    """
    config = WeightCompressionConfig() if config is None else WeightCompressionConfig.coerce(config)
    data = dataset if dataset is not None else config.dataset
    _check_supported(config, data)
    start = time.perf_counter()
    sites, skipped = find_weight_sites(ov_model)
    for op_name, reason in skipped:
        logger.info("Not compressed: %s (%s)", op_name, reason)

    stats, samples = None, None
    if config.data_aware_options:
        samples = prepare_samples(data, tokenizer, config.subset_size, config.sample_length, ov_model=ov_model)
        logger.info("Calibrating on %d samples of up to %d tokens.", len(samples), config.sample_length)
        scale_estimation = config.scale_estimation and not config.gptq  # GPTQ refits scales on its own Hessians
        sensitivity_needs_data = any(o.startswith("sensitivity_metric=") for o in config.data_aware_options)
        if config.awq or scale_estimation or sensitivity_needs_data:  # GPTQ / LoRA alone need only their passes
            stats = collect_statistics(ov_model, sites, samples, raw_rows=RAW_ROWS if config.awq or scale_estimation else 0,
                                       progress=progress, cache_path=statistics_path,
                                       gram_block=GRAM_BLOCK if scale_estimation else 0)

    sensitivity = sensitivity_function(config.effective_sensitivity_metric, stats)
    plans = plan_layers(sites, config, sensitivity)
    adjusted: dict[str, list[str]] = {}
    for p in plans:
        if p.note.startswith("group size adjusted"):
            adjusted.setdefault(f"{p.note} ({p.site.in_channels} input channels)", []).append(p.site.op_names[0])
    for note, names in adjusted.items():
        logger.info("%s for %d layer(s): %s", note.capitalize(), len(names), ", ".join(names))
    if config.awq:
        for rec in apply_awq(ov_model, plans, stats, config.mode):
            logger.debug("AWQ %s", rec)

    records = [_layer_record(p) for p in plans]
    sequential = [p for p in plans if _is_sequential(p, config)]
    later = {id(p) for p in sequential}
    todo = [(p, r) for p, r in zip(plans, records) if id(p) not in later and p.mode is not None]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="Compressing weights", unit="layer")
    # weights are read and graph edits made here, in order; the maths of the next layers runs meanwhile
    work = ((p, record, read_weight(p.site)) for p, record in todo)
    for (p, record, _), cw in in_order(lambda item: _compress_layer(item[0], config, stats, item[2]), work):
        record["relative_error"] = round(cw.relative_error, 6)
        replace_with_compressed(p.site, cw)
        del cw
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if sequential:
        by_plan = {id(p): r for p, r in zip(plans, records)}
        _compress_sequentially(ov_model, sequential, [by_plan[id(p)] for p in sequential], config, stats, samples, progress)

    write_rt_info(ov_model, config.to_dict(), records)
    logger.info("Weight compression took %.2f s.\n%s", time.perf_counter() - start, bitwidth_table(records))
    return ov_model


def _is_sequential(p: LayerPlan, config: WeightCompressionConfig) -> bool:
    """Layers that GPTQ or LoRA correction handle: 2-D MatMul weights in the primary 4-bit mode."""
    return (config.gptq or config.lora_correction) and p.mode is config.mode and p.site.kind == "matmul" and len(p.site.shape) == 2


def _compress_sequentially(model, plans, records, config: WeightCompressionConfig, stats, samples, progress: bool) -> None:
    """GPTQ or LoRA correction, layer inputs taken from the model as it is being compressed.

    The layers are grouped by their activation input, in topological order;
    each pass over the calibration samples collects ``X^T X`` for the next
    :data:`SOURCES_PER_PASS` inputs on the current (partially compressed)
    model, then compresses their layers.  Only one pass's Hessians are held;
    each pass runs from where the previous one stopped
    (:class:`optimum_wc.statistics.LayerwiseHessians`).
    """
    nodes = ops_by_name(model)
    position = topological_positions(model)
    groups: dict[tuple[str, int], list] = {}
    for p, record in zip(plans, records):
        groups.setdefault(activation_source(nodes[p.site.op_names[0]]), []).append((p, record))
    order = sorted(groups, key=lambda k: min(position[n] for p, _ in groups[k] for n in p.site.op_names))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), desc="GPTQ" if config.gptq else "LoRA correction", unit="layer")
    passes = [order[start : start + SOURCES_PER_PASS] for start in range(0, len(order), SOURCES_PER_PASS)]
    layerwise = LayerwiseHessians(model, passes, samples)
    for j, batch in enumerate(passes):
        hessians = layerwise.collect(j)
        for key in batch:
            h = hessians[key].hessian
            chol = whitened_factor(h) if config.lora_correction else None  # shared by the layers of this input
            for members in _same_grid(groups[key]):
                cws = None
                if config.gptq:  # layers reading one input share one GPTQ run (rows are independent)
                    cws = gptq_quantize_layers([read_weight(p.site) for p, _ in members],
                                               [p.site.reduction_axis for p, _ in members], h, members[0][0].mode,
                                               members[0][0].group_size, scale_estimation=config.scale_estimation)
                for i, (p, record) in enumerate(members):
                    _compress_with_hessian(p, record, config, stats, h, nodes, None if cws is None else cws[i], chol)
                    if bar is not None:
                        bar.update(1)
                del cws
        del hessians
    if bar is not None:
        bar.close()


def _same_grid(members: list) -> list[list]:
    """``(plan, record)`` pairs split by (mode, group size), in first-seen order."""
    by_grid: dict[tuple, list] = {}
    for p, record in members:
        by_grid.setdefault((p.mode, p.group_size), []).append((p, record))
    return list(by_grid.values())


def _compress_with_hessian(p: LayerPlan, record: dict, config: WeightCompressionConfig, stats, h, nodes, cw=None,
                           chol=None) -> None:
    """One layer of :func:`_compress_sequentially`: ``cw`` (GPTQ's result) or RTN / scale estimation, then the LoRA adapter if asked."""
    weight = read_weight(p.site) if cw is None or config.lora_correction else None  # GPTQ read it already
    if cw is None:
        cw = _compress_layer(p, config, stats, weight)
    record["relative_error"] = round(cw.relative_error, 6)
    adapter, inputs = None, []
    if config.lora_correction:
        for op_name in p.site.op_names:
            try:
                inputs.append((nodes[op_name], adapter_input(nodes[op_name])))
            except ValueError as exc:
                logger.info("No LoRA adapter for %s: %s", op_name, exc)
        out_in = lambda a: a.T if p.site.reduction_axis % 2 == 0 else a  # noqa: E731
        adapter = fit_lora(out_in(weight), out_in(dequantize(cw)), h, config.lora_rank, chol=chol) if inputs else None
        record["lora_error_ratio"] = None if adapter is None else round(adapter.error_after / adapter.error_before, 6)
    replace_with_compressed(p.site, cw)
    if adapter is not None:
        for i, (matmul, x) in enumerate(inputs):
            add_lora_adapter(matmul, x, adapter.a, adapter.b, p.site.name if i == 0 else f"{p.site.name}/{i}")


def _compress_layer(p: LayerPlan, config: WeightCompressionConfig, stats, weight=None) -> Any:
    """Round-to-nearest, or scale estimation for primary-mode 2-D MatMul weights when asked."""
    weight = read_weight(p.site) if weight is None else weight
    use_se = (
        config.scale_estimation
        and p.mode is config.mode
        and p.site.kind == "matmul"
        and len(p.site.shape) == 2
        and stats is not None
        and p.site.name in stats
        and stats[p.site.name].n_tokens > 0
    )
    if use_se:
        st = stats[p.site.name]
        return estimate_scales(weight, st.rows, p.mode, p.group_size, p.site.reduction_axis, st.group_grams(p.group_size))
    return quantize(weight, p.mode, p.group_size, p.site.reduction_axis)


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
