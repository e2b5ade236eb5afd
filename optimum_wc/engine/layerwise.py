"""Layer-wise steps (GPTQ, LoRA correction): each layer's input taken from the model as it is being compressed.

The layers are grouped by their activation input, in topological order;
each pass over the calibration samples collects ``X^T X`` for the next
:data:`SOURCES_PER_PASS` inputs on the current (partially compressed) model,
then compresses their layers.  Only one pass's Hessians are held; each pass
runs from where the previous one stopped
(:class:`optimum_wc.calibration.hessians.LayerwiseHessians`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from ..calibration.hessians import LayerwiseHessians
from ..ir.sites import activation_source, ops_by_name, topological_positions
from .planning import LayerPlan
from .steps import LayerInput, LayerOutput, Step, StepData

SOURCES_PER_PASS = 4  # activations (layer inputs) whose Hessians one calibration pass collects


def same_grid(plans: Sequence[LayerPlan]) -> list[list[LayerPlan]]:
    """``plans`` split by (mode, group size), in first-seen order."""
    by_grid: dict[tuple, list[LayerPlan]] = {}
    for p in plans:
        by_grid.setdefault((p.mode, p.group_size), []).append(p)
    return list(by_grid.values())


def compress_layerwise(
    model,
    plans: Sequence[LayerPlan],
    step: Step,
    data: StepData,
    samples: Sequence[np.ndarray],
    prepare: Callable[[LayerPlan], LayerInput],
    apply: Callable[[LayerPlan, LayerOutput], None],
    progress: bool = False,
    reference=None,
) -> None:
    """Run ``step`` on ``plans`` pass by pass; ``prepare`` reads a layer, ``apply`` writes its result into the graph.

    ``data`` carries the statistics; each input's Hessian is added here,
    and with ``reference`` (the model before compression) GPTAQ's
    float-against-quantized term (:class:`~optimum_wc.calibration.hessians.LayerwiseHessians`).
    """
    nodes = ops_by_name(model)
    position = topological_positions(model)
    groups: dict[tuple[str, int], list[LayerPlan]] = {}
    for p in plans:
        groups.setdefault(activation_source(nodes[p.site.op_names[0]]), []).append(p)
    order = sorted(groups, key=lambda k: min(position[n] for p in groups[k] for n in p.site.op_names))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), desc=step.label or step.name, unit="layer")
    passes = [order[start : start + SOURCES_PER_PASS] for start in range(0, len(order), SOURCES_PER_PASS)]
    layerwise = LayerwiseHessians(model, passes, samples, reference=reference)
    for j, batch in enumerate(passes):
        hessians = layerwise.collect(j)
        for key in batch:
            input_data = replace(data, hessian=hessians[key].hessian, cross=hessians[key].cross_term)  # shared
            for members in same_grid(groups[key]):
                outputs = step.run([prepare(p) for p in members], input_data)
                for p, out in zip(members, outputs):
                    apply(p, out)
                    if bar is not None:
                        bar.update(1)
                del outputs
        del hessians
    if bar is not None:
        bar.close()
