"""``compress_model``: the one entry point of our compression engine.

Objective: replace each float weight ``W`` of the model's linear and
embedding layers by integer codes ``q`` with scales ``s`` (and zero points
``z``) such that ``s * (q - z)`` approximates ``W`` on the chosen grid, with
the per-layer precision chosen by :mod:`optimum_wc.engine.planning`.  The
approximation of each primary-mode layer is the config's step
(:mod:`optimum_wc.engine.steps`: round-to-nearest, scale estimation, GPTQ,
LoRA correction); AWQ edits the float weights first.  Weights are processed
one at a time and each float constant is released as soon as it is replaced;
layer-wise steps take each layer's inputs from the partially compressed
model, in topological order (:mod:`optimum_wc.engine.layerwise`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any, Callable

from ..calibration.samples import prepare_samples
from ..calibration.statistics import collect_statistics
from ..config import WeightCompressionConfig
from ..ir.decompression import (adapter_input, add_lora_adapter, constant_arrays, pack_for_ir, replace_with_compressed,
                                subgraph_from_arrays)
from ..ir.rt_info import write_rt_info
from ..ir.serialize import fold_postponed_constants
from ..ir.sites import find_weight_sites, ops_by_name, read_weight, set_float_weight
from ..quant.kernels import warm_up as warm_up_kernels
from ..quant.lowering import use_fused_kernel
from ..report import bitwidth_table
from .awq import apply_awq
from .layerwise import compress_layerwise
from .planning import LayerPlan, plan_layers
from .sensitivity import sensitivity_function
from .steps import RTN, LayerInput, LayerOutput, Step, StepData, step_for
from .threads import in_order

if use_fused_kernel():
    warm_up_kernels()  # numba's one-time load runs while the caller exports or reads the model

logger = logging.getLogger("optimum_wc")

__all__ = ["compress_model"]

RAW_ROWS = 256  # AWQ / scale estimation: rows of raw activations kept per layer input
GRAM_BLOCK = 128  # scale estimation: exact group Grams for group sizes dividing gcd(channels, 128)


def compress_model(
    ov_model,
    config: WeightCompressionConfig | dict | Any = None,
    dataset: Any = None,
    *,
    tokenizer: Any = None,
    progress: bool = False,
    statistics_path: str | None = None,
    spill: Any = None,
):
    """Compress the weights of ``ov_model`` (an ``openvino.Model``) in place and return it.

    ``config`` is a :class:`WeightCompressionConfig`, its dict, or an
    optimum-intel ``OVWeightQuantizationConfig``.  ``dataset`` (else
    ``config.dataset``) is the calibration data of data-aware options; text
    needs ``tokenizer``.  ``statistics_path`` caches activation statistics
    on disk and reuses them for the same model and data.  ``spill``: a
    :class:`optimum_wc.resources.SpillArena` that holds the compressed
    constants (file-backed, not anonymous memory); it must outlive the
    model (its constants point into it).  The chosen mode and
    group size of every layer are written to the model's ``rt_info`` and
    logged as a bit-width distribution table.
    """
    config = WeightCompressionConfig() if config is None else WeightCompressionConfig.coerce(config)
    data = dataset if dataset is not None else config.dataset
    if data is not None and not config.needs_data:
        logger.info("Calibration data was given but this config does not use it (no data-aware option).")
    step = step_for(config)
    start = time.perf_counter()
    fold_postponed_constants(ov_model)  # a converter's model: the weights behind its postponed transposes are sites
    sites, skipped = find_weight_sites(ov_model)
    for op_name, reason in skipped:
        logger.info("Not compressed: %s (%s)", op_name, reason)
    stats, samples = None, None
    if config.needs_data:
        samples = prepare_samples(data, tokenizer, config.subset_size, config.sample_length, ov_model=ov_model)
        logger.info("Calibrating on %d samples of up to %d tokens.", len(samples), config.sample_length)
        if config.awq or step.statistics or config.sensitivity_needs_data or config.codebook_needs_data:
            # (layer-wise steps need only their passes)
            rows = config.awq or step.statistics or config.codebook_needs_data
            stats = collect_statistics(ov_model, sites, samples, raw_rows=RAW_ROWS if rows else 0,
                                       progress=progress, cache_path=statistics_path,
                                       gram_block=GRAM_BLOCK if step.statistics else 0)

    plans = plan_layers(sites, config, sensitivity_function(config.effective_sensitivity_metric, stats))
    log_adjusted_group_sizes(plans)
    if config.awq:
        # the model is not run again unless a layer-wise step follows: then the edits must be in the graph now
        for rec in apply_awq(ov_model, plans, stats, config.mode, lazy=not step.layerwise):
            logger.debug("AWQ %s", rec)

    # GPTAQ: the model as it is now (AWQ applied, nothing compressed) is the float reference of the passes
    reference = ov_model.clone() if config.gptq_asymmetric and step.layerwise else None
    records = {id(p): p.record() for p in plans}
    apply = _GraphWriter(ov_model, records, spill)
    step_data = StepData(stats, lora_rank=config.lora_rank, act_order=config.gptq_act_order,
                         refine_rounds=config.gptq_refine_rounds, ranges=config.range_rule)
    step_of = lambda p: step if p.is_primary_matmul(config.mode) else RTN  # noqa: E731 - the rest: round to nearest
    deferred = [p for p in plans if step_of(p).layerwise]
    now = [p for p in plans if p.mode is not None and not step_of(p).layerwise]
    _compress_now(now, step_of, step_data, apply, progress)
    if deferred:
        prepare = lambda p: LayerInput(p, read_weight(p.site), step.adapters and apply.adapter_ready(p))  # noqa: E731
        compress_layerwise(ov_model, deferred, step, step_data, samples, prepare, apply, progress, reference)

    for p in plans:  # a weight left float (e.g. ignored) that an AWQ absorber edited: make its edits now
        if p.site.const is not None and p.site.pending:
            set_float_weight(p.site, read_weight(p.site))
    layers = [records[id(p)] for p in plans]
    write_rt_info(ov_model, config.to_dict(), layers)
    logger.info("Weight compression took %.2f s.\n%s", time.perf_counter() - start, bitwidth_table(layers))
    return ov_model


def log_adjusted_group_sizes(plans: list[LayerPlan]) -> None:
    adjusted: dict[str, list[str]] = {}
    for p in plans:
        if p.note.startswith("group size adjusted"):
            adjusted.setdefault(f"{p.note} ({p.site.in_channels} input channels)", []).append(p.site.op_names[0])
    for note, names in adjusted.items():
        logger.info("%s for %d layer(s): %s", note.capitalize(), len(names), ", ".join(names))


def _compress_now(plans: list[LayerPlan], step_of: Callable[[LayerPlan], Step], data: StepData, apply,
                  progress: bool) -> None:
    """Layers whose step needs no layer-wise pass: their maths runs ahead on a thread pool, graph edits in order."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), desc="Compressing weights", unit="layer")
    work = ((p, read_weight(p.site)) for p in plans)  # weights read and graph edits made here, in order
    def run(item) -> LayerOutput:  # on a worker thread: the maths, and the codes packed as the IR stores them
        out = step_of(item[0]).run([LayerInput(*item)], data)[0]
        pack_for_ir(out.compressed)
        return out

    with contextlib.closing(in_order(run, work)) as results:  # stopped early: the running layers finish first
        for (p, _), out in results:
            apply(p, out)
            del out
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


class _GraphWriter:
    """Writes a step's result into the graph: the compressed weight, then any LoRA adapter; fills the record."""

    def __init__(self, model, records: dict[int, dict], spill: Any = None):
        self.model = model
        self.records = records
        self.spill = spill
        self.adapter_inputs: dict[int, list] = {}

    @functools.cached_property
    def nodes(self) -> dict[str, Any]:
        return ops_by_name(self.model)  # only LoRA adapters need them

    def adapter_ready(self, p: LayerPlan) -> bool:
        """Find where an adapter beside ``p``'s MatMuls would read its input (call while the weight is float)."""
        inputs = []
        for op_name in p.site.op_names:
            try:
                inputs.append((self.nodes[op_name], adapter_input(self.nodes[op_name])))
            except ValueError as exc:
                logger.info("No LoRA adapter for %s: %s", op_name, exc)
        self.adapter_inputs[id(p)] = inputs
        return bool(inputs)

    def __call__(self, p: LayerPlan, out: LayerOutput) -> None:
        record = self.records[id(p)]
        record["relative_error"] = round(out.compressed.relative_error, 6)
        record.update(out.notes)
        cw, new = out.compressed, None
        if self.spill is not None:  # the constants' bytes go to the arena's file-backed pages, shared, not copied
            arrays = {k: (self.spill.put(a), t, s) for k, (a, t, s) in constant_arrays(cw, p.site.name).items()}
            if all(a is not None for a, _, _ in arrays.values()):  # else (no room): in memory, as without an arena
                new = subgraph_from_arrays(arrays, cw.group_size, cw.original_shape, p.site.name, shared=True)
        replace_with_compressed(p.site, cw, new)
        if out.adapter is not None:
            for i, (matmul, x) in enumerate(self.adapter_inputs.pop(id(p))):
                add_lora_adapter(matmul, x, out.adapter.a, out.adapter.b, p.site.name if i == 0 else f"{p.site.name}/{i}")
