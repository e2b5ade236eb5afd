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

from ..ir.probes import BOUNDARY_INPUT, Probe, pass_boundaries, reference_input, statistics_model
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
    cross: np.ndarray | None = None  # sum of (X - X~)^T X~: the float model's inputs X against these X~ (GPTAQ)

    def __post_init__(self) -> None:
        if self.xtx is None:
            self.xtx = np.zeros((self.channels, self.channels), dtype=np.float64)

    def add(self, xtx: np.ndarray, tokens: int) -> None:
        self.n_tokens += tokens
        self.xtx += xtx

    def add_cross(self, part: np.ndarray) -> None:
        """Add ``(X_float - X)^T X`` of one batch (computed in the statistics graph, ``Probe.cross``)."""
        if self.cross is None:
            self.cross = np.zeros((self.channels, self.channels), dtype=np.float64)
        self.cross += part  # float64 sums, converted element by element (no float64 copy of the batch's part)

    @property
    def hessian(self) -> np.ndarray:
        """GPTQ's layer Hessian ``H = 2 X^T X / N``."""
        return self.xtx * (2.0 / max(self.n_tokens, 1))

    @property
    def cross_term(self) -> np.ndarray | None:
        """GPTAQ's ``P = 2 (X_float - X)^T X / N`` (None without a float reference)."""
        return None if self.cross is None else self.cross * (2.0 / max(self.n_tokens, 1))


class _PassRunner:
    """One model's passes: each from the cached boundary values of the previous one (per batch)."""

    def __init__(self, model, passes: Sequence[Sequence[tuple[str, int]]], precision: str):
        self.model, self.precision = model, precision
        self.boundaries = pass_boundaries(model, passes)
        self.cached: list[np.ndarray] | None = None  # boundary values of the previous pass, per batch

    def start(self, j: int, probes: Sequence[Probe]):
        """The compiled statistics model of pass ``j`` and its output layout."""
        start = self.boundaries[j - 1] if j > 0 else None  # set: pass j - 1 cached its values
        model, layout = statistics_model(self.model, probes, boundary_in=start, boundary_out=self.boundaries[j])
        self._start, self._end, self._next_cache = start, self.boundaries[j], []
        return StatisticsRunner(model, self.precision), layout

    def run(self, runner, layout, number: int, ids: np.ndarray,
            extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        extra = dict(extra or {})
        if self._start is not None:
            extra[BOUNDARY_INPUT] = self.cached[number]
        outputs = runner.run(ids, extra)
        if self._end is not None:
            self._next_cache.append(outputs[layout[("boundary", "boundary")]])
        return outputs

    def finish(self) -> None:
        self.cached = self._next_cache if self._end is not None else None


class LayerwiseHessians:
    """``X^T X`` of each pass's activations, pass after pass, on the model as it is being compressed.

    ``passes`` lists the activation sources of each pass in topological
    order.  :meth:`collect` must be called for pass 0, 1, ... in turn, after
    the layers of the previous pass were compressed in ``model``: pass ``j``
    runs from the cached value of boundary ``j - 1`` (computed by pass
    ``j - 1`` with all earlier layers already compressed, see
    :func:`optimum_wc.ir.probes.pass_boundaries`), so the inputs it sees are
    exactly those of the partially compressed model.  With ``reference``
    (the model before any compression) the same passes run on it as well,
    batch by batch in step: its activations are fed to the compressed
    model's pass, whose graph also reduces GPTAQ's float-against-quantized
    term ``(X_float - X)^T X`` (:meth:`InputHessian.add_cross`).
    """

    def __init__(self, model, passes: Sequence[Sequence[tuple[str, int]]], samples: Sequence[np.ndarray],
                 precision: str | None = None, reference=None):
        self.model = model
        self.passes = [list(p) for p in passes]
        self.samples = samples
        self.precision = precision if precision is not None else statistics.PRECISION
        self.batches = sample_batches(samples)
        self._runs = [_PassRunner(m, self.passes, self.precision) for m in (model, reference) if m is not None]
        self.boundaries = self._runs[0].boundaries
        self._next = 0
        used = sum(b is not None for b in self.boundaries)
        logger.info("GPTQ/LoRA passes: %d, %d of them start from the previous pass's boundary.", len(self.passes), used)

    def collect(self, j: int) -> dict[tuple[str, int], InputHessian]:
        if j != self._next:
            raise RuntimeError(f"passes run in order: expected pass {self._next}, got {j}")
        self._next += 1
        asym = len(self._runs) > 1
        sources = self.passes[j]
        own = self._runs[0].start(j, [Probe(source, xtx=True, cross=asym) for source in sources])
        ref = self._runs[1].start(j, [Probe(source, raw=True) for source in sources]) if asym else None
        nodes = ops_by_name(self.model)
        out = {source: InputHessian(activation_channels(nodes, source)) for source in sources}
        for number, batch in enumerate(self.batches):
            ids = stack_samples(self.samples, batch)
            feed = None
            if asym:
                floats = self._runs[1].run(*ref, number, ids)
                feed = {reference_input(k): floats[ref[1][(s, "raw")]] for k, s in enumerate(sources)}
            outputs = self._runs[0].run(*own, number, ids, feed)
            for source in sources:
                out[source].add(outputs[own[1][(source, "xtx")]], ids.size)
                if asym:
                    out[source].add_cross(outputs[own[1][(source, "cross")]])
        for run in self._runs:
            run.finish()
        return out
