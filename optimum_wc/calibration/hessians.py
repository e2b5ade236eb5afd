"""Per-layer Hessians ``X^T X`` for GPTQ and LoRA correction, on the model as it is being compressed.

Objective: the inputs a layer sees in the *partially compressed* model
(every earlier layer already compressed), at the cost of about two forward
passes in all.  The layers are collected pass by pass; each pass starts from
the cached value of the previous pass's boundary tensor (the residual
stream, :func:`optimum_wc.ir.probes.pass_boundaries`), so it runs only the
graph between the two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..ir.probes import BOUNDARY_INPUT, Probe, pass_boundaries, statistics_model
from ..ir.sites import activation_channels, ops_by_name
from . import statistics
from .runners import StatisticsRunner
from .statistics import sample_batches, stack_samples

logger = logging.getLogger("optimum_wc")


@dataclass
class InputHessian:
    """``X^T X`` (float64 sums) of one activation over all calibration tokens."""

    channels: int
    n_tokens: int = 0
    xtx: np.ndarray = None

    def __post_init__(self) -> None:
        if self.xtx is None:
            self.xtx = np.zeros((self.channels, self.channels), dtype=np.float64)

    def add(self, xtx: np.ndarray, tokens: int) -> None:
        self.n_tokens += tokens
        self.xtx += xtx

    @property
    def hessian(self) -> np.ndarray:
        """GPTQ's layer Hessian ``H = 2 X^T X / N``."""
        return self.xtx * (2.0 / max(self.n_tokens, 1))


class LayerwiseHessians:
    """``X^T X`` of each pass's activations, pass after pass, on the model as it is being compressed.

    ``passes`` lists the activation sources of each pass in topological
    order.  :meth:`collect` must be called for pass 0, 1, ... in turn, after
    the layers of the previous pass were compressed in ``model``: pass ``j``
    runs from the cached value of boundary ``j - 1`` (computed by pass
    ``j - 1`` with all earlier layers already compressed, see
    :func:`optimum_wc.ir.probes.pass_boundaries`) to its own sources, so the
    inputs it sees are exactly those of the partially compressed model.
    """

    def __init__(self, model, passes: Sequence[Sequence[tuple[str, int]]], samples: Sequence[np.ndarray],
                 precision: str | None = None):
        self.model = model
        self.passes = [list(p) for p in passes]
        self.samples = samples
        self.precision = precision if precision is not None else statistics.PRECISION
        self.batches = sample_batches(samples)
        self.boundaries = pass_boundaries(model, self.passes)
        self._cached: list[np.ndarray] | None = None  # boundary values of the previous pass, per batch
        self._next = 0
        used = sum(b is not None for b in self.boundaries)
        logger.info("GPTQ/LoRA passes: %d, %d of them start from the previous pass's boundary.", len(self.passes), used)

    def collect(self, j: int) -> dict[tuple[str, int], InputHessian]:
        if j != self._next:
            raise RuntimeError(f"passes run in order: expected pass {self._next}, got {j}")
        self._next += 1
        start = self.boundaries[j - 1] if j > 0 else None  # set: pass j - 1 cached its values
        end = self.boundaries[j]
        probes = [Probe(source, xtx=True) for source in self.passes[j]]
        model, layout = statistics_model(self.model, probes, boundary_in=start, boundary_out=end)
        runner = StatisticsRunner(model, self.precision)
        del model
        nodes = ops_by_name(self.model)
        out = {source: InputHessian(activation_channels(nodes, source)) for source in self.passes[j]}
        cached: list[np.ndarray] = []
        for number, batch in enumerate(self.batches):
            ids = stack_samples(self.samples, batch)
            extra = {BOUNDARY_INPUT: self._cached[number]} if start is not None else None
            outputs = runner.run(ids, extra)
            for source in self.passes[j]:
                out[source].add(outputs[layout[(source, "xtx")]], ids.size)
            if end is not None:
                cached.append(outputs[layout[("boundary", "boundary")]])
        self._cached = cached if end is not None else None
        return out
