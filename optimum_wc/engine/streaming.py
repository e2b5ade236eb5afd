"""Data-free compression written straight into the IR files, one layer in memory at a time.

Objective: the IR that ``compress_model`` followed by ``openvino.save_model``
writes, byte for byte, with anonymous memory bounded by a few layers' float
weights whatever the model's size.  The float weights are read where they
are (a memory-mapped checkpoint or IR); the compressed ones go to the
``.bin`` as soon as they are computed:

1. plan every layer (:mod:`optimum_wc.engine.planning`), as ``compress_model`` does;
2. put each planned layer's decompression subgraph in the graph with
   *placeholder* constants (views of one zero buffer), so the graph has its
   final structure and its serialization order is known;
3. walk the constants in that order (:mod:`optimum_wc.ir.serialize`): a
   layer's codes, zero points and scales are computed when its first
   constant comes up (a few layers ahead on a thread pool, the float weight
   read straight from the checkpoint when the caller can), written, and
   released; every other constant is written as it is;
4. serialize the XML and give it the written offsets.

The model object is left holding placeholders: read the IR back to use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import WeightCompressionConfig
from ..errors import ConfigError
from ..ir.decompression import constant_arrays, place_placeholders
from ..ir.rt_info import write_rt_info
from ..ir.serialize import OrderedBinWriter, constant_bytes, fold_postponed_constants, ordered_constants, write_xml
from ..ir.sites import find_weight_sites, stored_weight
from ..layout import IR_BIN
from ..quant.lowering import compressed_shapes, quantize
from ..report import bitwidth_table
from ..resources import release
from .compress import log_adjusted_group_sizes
from .planning import LayerPlan, plan_layers
from .sensitivity import sensitivity_function
from .steps import RTN, LayerInput, LayerOutput, StepData, fit_codebooks, step_for
from .threads import in_order

logger = logging.getLogger("optimum_wc")


def compress_to_ir(ov_model, config: WeightCompressionConfig, xml_path: str | Path, *, progress: bool = False,
                   source: Any = None, deferred: Any = None) -> list[dict[str, Any]]:
    """Compress ``ov_model``'s weights with the data-free ``config`` into ``xml_path`` and its ``.bin``.

    Returns the layer records (also in the IR's ``rt_info``).  Data-aware
    configs need the whole float model for calibration: use ``compress_model``.
    ``source`` reads a site's float weight some faster way than through its
    constant, e.g. straight from the checkpoint's files: ``source.read(site)``
    (None where it cannot) and, if it has it, ``source.recycle(array)`` once
    a read array is used.  ``deferred`` holds constants already in the
    graph as placeholders whose bytes are made when written (e.g. the layers
    of a pre-quantized checkpoint): ``deferred.owners`` maps a constant's
    name to a key, ``deferred.compute(key)`` gives the key's constants as
    ``{name: (bytes, element type, shape)}``.
    """
    if config.needs_data:
        raise ConfigError("compress_to_ir is for data-free configs; data-aware options go through compress_model.")
    start = time.perf_counter()
    fold_postponed_constants(ov_model)  # the serializer would fold them: the weights behind them are sites too
    sites, skipped = find_weight_sites(ov_model)
    for op_name, reason in skipped:
        logger.info("Not compressed: %s (%s)", op_name, reason)
    plans = plan_layers(sites, config, sensitivity_function(config.effective_sensitivity_metric, None))
    log_adjusted_group_sizes(plans)
    records = {id(p): p.record() for p in plans}
    # ``zeros`` backs every placeholder constant (shared memory): it must outlive the XML serialization
    owners, float_sites, zeros = _place_placeholders([p for p in plans if p.mode is not None])
    later = dict(deferred.owners) if deferred is not None else {}
    if owners.keys() & later.keys():
        raise ConfigError(f"constants {sorted(owners.keys() & later.keys())[:3]} would be written twice.")
    owners.update(later)
    constants = ordered_constants(ov_model)
    order = list({id(p): p for p in (owners.get(c.get_friendly_name()) for c in constants) if p is not None}.values())
    rounder = _rounder(config, float_sites, source)
    results = in_order(lambda p: rounder(p) if isinstance(p, LayerPlan) else (None, deferred.compute(p)), order)
    bin_path = Path(xml_path).with_suffix(".bin") if Path(xml_path).suffix == ".xml" else Path(xml_path).parent / IR_BIN
    bar = _bar(len(order), progress)
    collecting = gc.isenabled()
    gc.disable()  # no cycles are made here; the collector would only walk the graph's many small objects
    try:
        with contextlib.closing(results):  # an interrupt waits for the layers being rounded (they read `source`)
            offsets, sizes = _write_bin(bin_path, constants, owners, results, records, float_sites, bar)
    finally:
        if collecting:
            gc.enable()
        if bar is not None:
            bar.close()
    layers = [records[id(p)] for p in plans]
    write_rt_info(ov_model, config.to_dict(), layers)
    write_xml(ov_model, Path(xml_path), offsets, sizes)
    del zeros
    logger.info("Weight compression (streamed to %s) took %.2f s.\n%s", bin_path.name, time.perf_counter() - start,
                bitwidth_table(layers))
    return layers


def _rounder(config: WeightCompressionConfig, float_sites: dict[int, Any], source: Any):
    """``plan -> (LayerOutput, its constants' arrays)``: round to nearest, reading the stored weight block by block."""
    assert step_for(config) is RTN, "data-free configs round to nearest"

    def compute(p: LayerPlan):
        site = float_sites[id(p)]
        read = source.read(site) if source is not None else None
        w = stored_weight(site) if read is None else read
        # round to nearest, 4-bit codes packed block by block (the unpacked codes never exist whole)
        fit_codebooks([LayerInput(p, w)], StepData())  # an adaptive codebook is fitted to the weight first
        out = LayerOutput(quantize(w, p.mode, p.group_size, site.reduction_axis, packed=True, codebook=p.codebook,
                                   ranges=config.range_rule))
        if read is None:
            release(w)  # file-mapped pages leave this process (they stay in the page cache)
        elif hasattr(source, "recycle"):
            source.recycle(read)  # its memory serves the next read
        return out, constant_arrays(out.compressed, p.site.name)

    return compute


def _write_bin(bin_path: Path, constants: list, owners: dict[str, Any], results, records: dict[int, dict],
               float_sites: dict[int, Any], bar) -> tuple[list[int], list[int]]:
    """Write every constant's bytes in serialization order; a layer's are taken from ``results`` when first needed."""
    ready: dict[int, dict] = {}
    writer = OrderedBinWriter(bin_path)
    try:
        for const in constants:
            p = owners.get(const.get_friendly_name())
            if p is None:
                writer.write(constant_bytes(const))
                continue
            while id(p) not in ready:
                q, (out, arrays) = next(results)
                ready[id(q)] = arrays
                if out is not None:  # a planned layer (else a deferred constant's owner)
                    records[id(q)]["relative_error"] = round(out.compressed.relative_error, 6)
                    records[id(q)].update(out.notes)
                    float_sites.pop(id(q)).const = None  # the float weight is no longer referenced
                if bar is not None:
                    bar.update(1)
            arrays = ready[id(p)]
            writer.write(arrays.pop(const.get_friendly_name())[0])
            if not arrays:
                del ready[id(p)]
    finally:
        writer.close()
    return writer.offsets, writer.sizes


def _place_placeholders(plans: list[LayerPlan]) -> tuple[dict[str, LayerPlan], dict[int, Any], np.ndarray]:
    """Give each plan its decompression subgraph of placeholders.

    Returns the constants' owners, the float sites and the zero buffer the
    placeholders share (keep it alive while the graph is used).
    """
    float_sites = {id(p): dataclasses.replace(p.site) for p in plans}  # keep the float constants for reading later
    owners, zeros = place_placeholders(
        [(p, p.site, p.mode, *compressed_shapes(p.site.shape, p.site.reduction_axis, p.group_size), p.group_size,
          p.codebook)
         for p in plans])
    for p in plans:
        p.site = float_sites[id(p)]  # the plan's site stays readable for the steps
    return owners, float_sites, zeros


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Compressing weights", unit="layer")
