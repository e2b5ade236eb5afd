"""The per-layer algorithms as interchangeable steps, one signature, looked up from the config.

A step compresses the layers that read one input (all in one mode and group
size) from their float weights::

    step.run(layers: Sequence[LayerInput], data: StepData) -> list[LayerOutput]

Each minimises its own objective (stated in its ``optimum_wc.quant`` module):
round-to-nearest the weight error ``||W - deq(Q(W))||``; scale estimation and
GPTQ the output error ``tr((W - deq(Q)) H (W - deq(Q))^T)`` on calibration
inputs; LoRA correction adds a low-rank adapter fitted to the remaining
output error.  :data:`STEPS` maps the set of per-layer options switched on
in the config to its step, so a new algorithm is one new entry, not new
branches in the engine.  A step marked ``layerwise`` needs the Hessian of
the layers' input taken on the partially compressed model (the engine runs
it pass by pass); ``statistics`` asks for activation rows and group Grams;
``adapters`` may add a LoRA branch beside a layer.
Layers outside the primary 4-bit mode always take :data:`RTN`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..calibration.statistics import ActivationStats
from ..config import CompressWeightsMode, WeightCompressionConfig
from ..errors import ConfigError
from ..quant.codebook_estimation import choose_codebook
from ..quant.gptq import gptq_quantize_layers
from ..quant.lora import LoraAdapter, fit_lora, whitened_factor
from ..quant.lowering import CompressedWeight, as_float32, dequantize, quantize
from ..quant.scale_estimation import estimate_scales
from .planning import LayerPlan


@dataclass
class LayerInput:
    """One layer given to a step: its plan (mode, group size, site) and float32 weight."""

    plan: LayerPlan
    weight: np.ndarray
    takes_adapter: bool = False  # the graph can take a LoRA adapter beside this layer


@dataclass
class LayerOutput:
    """What a step made of one layer: its compressed weight, an adapter, and extra fields for its record."""

    compressed: CompressedWeight
    adapter: LoraAdapter | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepData:
    """What the steps may read: activation statistics by layer name, the Hessian of the layers' input."""

    stats: Mapping[str, ActivationStats] | None = None
    hessian: np.ndarray | None = None  # H = 2 X^T X / N, layer-wise steps only
    lora_rank: int = 8
    act_order: bool = False  # GPTQ's column order (WeightCompressionConfig.gptq_act_order)
    refine_rounds: int = 0  # WeightCompressionConfig.gptq_refine_rounds
    ranges: str | None = None  # WeightCompressionConfig.range_rule: "mse", "full" or None (round to nearest)
    cross: np.ndarray | None = None  # GPTAQ's float-against-quantized term of the layers' input (layer-wise steps)

    @functools.cached_property
    def whitening(self) -> np.ndarray:
        """The Cholesky factor of the damped Hessian, shared by every layer reading this input (LoRA)."""
        return whitened_factor(self.hessian)


@dataclass(frozen=True)
class Step:
    """A per-layer algorithm: its name, its function and what data it needs."""

    name: str
    run: Callable[[Sequence[LayerInput], StepData], list[LayerOutput]]
    layerwise: bool = False
    statistics: bool = False
    adapters: bool = False  # may add a LoRA adapter beside a layer
    label: str = ""  # shown on the progress bar of layer-wise steps


def _rtn(layers: Sequence[LayerInput], data: StepData) -> list[LayerOutput]:
    return _round(fit_codebooks(layers, data), data.ranges)


def _round(layers: Sequence[LayerInput], ranges: str | None = None) -> list[LayerOutput]:
    return [LayerOutput(quantize(x.weight, x.plan.mode, x.plan.group_size, x.plan.site.reduction_axis,
                                 codebook=x.plan.codebook, ranges=ranges)) for x in layers]


def fit_codebooks(layers: Sequence[LayerInput], data: StepData) -> Sequence[LayerInput]:
    """Give each adaptive-codebook layer its own table, fitted to its weight (:mod:`optimum_wc.quant.codebook_estimation`).

    Each input channel weighs by its mean squared activation, ``diag(H) / 2``
    or the statistics' ``sum x^2 / N``, when calibration saw the layer; else 1.
    """
    for x in layers:
        p = x.plan
        if p.mode is not CompressWeightsMode.ADAPTIVE_CODEBOOK:
            continue
        st = (data.stats or {}).get(p.site.name)
        importance = None
        if data.hessian is not None:
            importance = np.diag(data.hessian) / 2
        elif st is not None and st.n_tokens:
            importance = st.sum_sq / st.n_tokens
        w = np.moveaxis(as_float32(x.weight), p.site.reduction_axis, -1)
        rows = st.rows if st is not None and p.site.kind == "matmul" else None
        p.codebook = choose_codebook(w.reshape(-1, w.shape[-1]), p.group_size, importance, start=p.codebook, rows=rows)
    return layers


def _scale_estimation(layers: Sequence[LayerInput], data: StepData) -> list[LayerOutput]:
    """Scale estimation where the layer's input was seen in calibration, else round-to-nearest."""
    layers = fit_codebooks(layers, data)
    out = []
    for x in layers:
        p, st = x.plan, (data.stats or {}).get(x.plan.site.name)
        if st is None or st.n_tokens == 0:
            out.extend(_round([x]))
            continue
        cw = estimate_scales(x.weight, st.rows, p.mode, p.group_size, p.site.reduction_axis, st.group_grams(p.group_size),
                             codebook=p.codebook)
        out.append(LayerOutput(cw))
    return out


def _gptq(scale_estimation: bool) -> Callable[[Sequence[LayerInput], StepData], list[LayerOutput]]:
    def run(layers: Sequence[LayerInput], data: StepData) -> list[LayerOutput]:
        """One GPTQ run for all the layers (rows are independent, so stacking them changes nothing)."""
        layers = fit_codebooks(layers, data)
        first = layers[0].plan
        cws = gptq_quantize_layers([x.weight for x in layers], [x.plan.site.reduction_axis for x in layers],
                                   data.hessian, first.mode, first.group_size, scale_estimation=scale_estimation,
                                   codebook=first.codebook, act_order=data.act_order,
                                   refine_rounds=data.refine_rounds, cross=data.cross)
        return [LayerOutput(cw) for cw in cws]

    return run


def _with_lora(base: Callable[[Sequence[LayerInput], StepData], list[LayerOutput]]):
    def run(layers: Sequence[LayerInput], data: StepData) -> list[LayerOutput]:
        """``base``, then a LoRA adapter of the remaining output error beside each layer that can take one."""
        outputs = base(layers, data)
        for x, out in zip(layers, outputs):
            adapter = None
            if x.takes_adapter:
                out_in = (lambda a: a.T) if x.plan.site.reduction_axis % 2 == 0 else (lambda a: a)
                adapter = fit_lora(out_in(x.weight), out_in(dequantize(out.compressed)), data.hessian, data.lora_rank,
                                   chol=data.whitening)
            out.adapter = adapter
            out.notes["lora_error_ratio"] = None if adapter is None else round(adapter.error_after / adapter.error_before, 6)
        return outputs

    return run


RTN = Step("rtn", _rtn)
# The config fields that choose the per-layer step (AWQ is not one: it edits the float model beforehand).
LAYER_OPTIONS = ("scale_estimation", "gptq", "lora_correction")
STEPS: dict[frozenset[str], Step] = {
    frozenset(): RTN,
    frozenset({"scale_estimation"}): Step("scale_estimation", _scale_estimation, statistics=True),
    frozenset({"gptq"}): Step("gptq", _gptq(False), layerwise=True, label="GPTQ"),
    # GPTQ chooses each group's scale on its own Hessian: no activation statistics needed
    frozenset({"gptq", "scale_estimation"}): Step("gptq+scale_estimation", _gptq(True), layerwise=True, label="GPTQ"),
    frozenset({"lora_correction"}): Step("lora_correction", _with_lora(_rtn), layerwise=True, adapters=True,
                                              label="LoRA correction"),
    frozenset({"scale_estimation", "lora_correction"}): Step(
        "scale_estimation+lora_correction", _with_lora(_scale_estimation), layerwise=True, statistics=True,
        adapters=True, label="LoRA correction"),
}


def step_for(config: WeightCompressionConfig) -> Step:
    """The step of the primary-mode 2-D MatMul layers under ``config``."""
    key = frozenset(name for name in LAYER_OPTIONS if getattr(config, name))
    if key not in STEPS:
        raise ConfigError(f"{' + '.join(sorted(key))} cannot be combined; switch one of them off.")
    return STEPS[key]
