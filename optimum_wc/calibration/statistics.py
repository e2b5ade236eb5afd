"""Activation statistics of every weighted MatMul's input, reduced inside the graph.

Objective: give the data-aware algorithms what they need of each layer input
``X`` (over all calibration tokens) at the cost of one forward pass, with
memory that does not grow with samples x sequence length.

The float IR is turned into *statistics models* (:func:`optimum_wc.ir.probes.
statistics_model`), one per segment of about one decoder block
(:func:`optimum_wc.ir.probes.statistics_segments`), run one after another:
each starts from the residual stream the previous one output, so only one
segment's weights are compiled at a time (memory of one block, not of the
model).  Logits and KV-cache state are dropped and every
MatMul input is reduced in the graph, in float32, to per-sample channel sums
(``sum x``, ``sum x^2``, ``sum |x|``, ``max |x|``), optionally the block
diagonal of ``X^T X`` (scale estimation) and a bounded, deterministic row
subsample (AWQ; at most ``raw_rows`` rows per input in all, at token
positions drawn uniformly per batch).  Samples of equal length are batched.
The network itself runs at the CPU plugin's default inference precision, as
NNCF's statistics passes do.

The per-layer ``X^T X`` of GPTQ and LoRA correction, taken pass by pass on
the partially compressed model, is in :mod:`optimum_wc.calibration.hessians`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..ir.probes import BOUNDARY_INPUT, ROWS_INPUT, Probe, statistics_model, statistics_segments
from ..ir.sites import WeightSite, activation_channels, activation_source, ops_by_name, topological_positions
from .runners import StatisticsRunner

logger = logging.getLogger("optimum_wc")

BATCH_TOKENS = 1024  # samples of equal length are run together, up to this many tokens per call
PRECISION: str | None = None  # inference precision of statistics passes; None: the CPU plugin's default
SOURCES_PER_SEGMENT = 4  # activations per compiled segment of the statistics pass (a decoder block's worth)


@dataclass
class ActivationStats:
    """Statistics of one activation tensor (the input of one or more MatMuls) over all calibration tokens."""

    channels: int
    n_tokens: int = 0
    sum: np.ndarray = None  # per channel, float64
    sum_sq: np.ndarray = None
    sum_abs: np.ndarray = None
    max_abs: np.ndarray = None
    sample_mean_var: list = field(default_factory=list)  # per sample: mean over channels of variance over tokens
    sample_max_var: list = field(default_factory=list)
    sample_mean_absmax: list = field(default_factory=list)
    raw: list = field(default_factory=list)  # row blocks of the subsample
    gram_block: int = 0  # > 0: the block-diagonal of X^T X with blocks of this size is collected
    gram: np.ndarray = None  # [C / gram_block, gram_block, gram_block], float64 sums

    def __post_init__(self) -> None:
        for name in ("sum", "sum_sq", "sum_abs"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.channels, dtype=np.float64))
        if self.max_abs is None:
            self.max_abs = np.zeros(self.channels, dtype=np.float32)
        if self.gram_block and self.gram is None:
            b = self.gram_block
            self.gram = np.zeros((self.channels // b, b, b), dtype=np.float64)

    def add_moments(self, moments: np.ndarray, tokens: int) -> None:
        """Fold in per-sample sums ``[batch, 4, C]`` (sum, sum of squares, sum of magnitudes, max magnitude)."""
        m = moments.astype(np.float64)
        self.n_tokens += tokens * m.shape[0]
        self.sum += m[:, 0].sum(axis=0)
        self.sum_sq += m[:, 1].sum(axis=0)
        self.sum_abs += m[:, 2].sum(axis=0)
        np.maximum(self.max_abs, moments[:, 3].max(axis=0).astype(np.float32), out=self.max_abs)
        mean = m[:, 0] / tokens
        var = np.maximum(m[:, 1] / tokens - mean * mean, 0.0)  # per sample, per channel (population variance)
        self.sample_mean_var.extend(float(v) for v in var.mean(axis=1))
        self.sample_max_var.extend(float(v) for v in var.max(axis=1))
        self.sample_mean_absmax.extend(float(v) for v in m[:, 3].mean(axis=1))

    def add_gram(self, gram: np.ndarray) -> None:
        self.gram += gram

    def add_rows(self, rows: np.ndarray) -> None:
        self.raw.append(np.ascontiguousarray(rows.reshape(-1, self.channels), dtype=np.float32))

    def scale_channels(self, factor: np.ndarray) -> None:
        """The statistics of ``X diag(factor)``: what the MatMuls read once AWQ moved ``diag(1 / s)`` upstream.

        Moments, magnitudes, raw rows and Gram blocks are rescaled exactly;
        the per-sample summaries (already used to rank the layers) are kept.
        """
        f = np.asarray(factor, dtype=np.float64).reshape(-1)
        self.sum *= f
        self.sum_sq *= f * f
        self.sum_abs *= np.abs(f)
        self.max_abs = (self.max_abs * np.abs(f)).astype(np.float32)
        self.raw = [(rows * f.astype(np.float32)).astype(np.float32) for rows in self.raw]
        if self.gram is not None:
            blocks = f.reshape(-1, self.gram_block)
            self.gram *= blocks[:, :, None] * blocks[:, None, :]

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n_tokens, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        """Per-channel mean magnitude ``E|x_c|`` (AWQ's activation scale)."""
        return self.sum_abs / max(self.n_tokens, 1)

    @property
    def mean_sq(self) -> np.ndarray:
        """Per-channel ``E[x_c^2]``: the diagonal of the layer Hessian ``2 E[x x^T]`` up to the factor 2."""
        return self.sum_sq / max(self.n_tokens, 1)

    def group_grams(self, group_size: int) -> np.ndarray | None:
        """``E[x_g x_g^T]`` for each input group of ``group_size`` channels, from all tokens, if collected."""
        if self.gram is None or group_size <= 0 or self.gram_block % group_size:
            return None
        k = self.gram_block // group_size
        blocks = self.gram.reshape(-1, k, group_size, k, group_size)
        diag = np.stack([blocks[:, i, :, i, :] for i in range(k)], axis=1)  # [n_blocks, k, gs, gs]
        return (diag.reshape(-1, group_size, group_size) / max(self.n_tokens, 1)).astype(np.float32)

    @property
    def rows(self) -> np.ndarray:
        """The raw subsample ``X [rows, C]`` (float32)."""
        return np.concatenate(self.raw, axis=0) if self.raw else np.zeros((0, self.channels), np.float32)


def sample_batches(samples: Sequence[np.ndarray], batch_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices of ``samples`` grouped into batches of equal length (first-seen length order, then sample order)."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(samples):
        by_length.setdefault(len(ids), []).append(i)
    batches = []
    for length, members in by_length.items():
        size = max(1, batch_tokens // max(length, 1))
        batches.extend(members[i : i + size] for i in range(0, len(members), size))
    return batches


def stack_samples(samples: Sequence[np.ndarray], batch: list[int]) -> np.ndarray:
    return np.stack([np.asarray(samples[i], dtype=np.int64) for i in batch])


def _row_positions(length: int, k: int, seed: int) -> np.ndarray:
    """``k`` token positions of a ``length``-token batch, drawn uniformly without replacement (sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(length, size=min(k, length), replace=False)).astype(np.int64)


def collect_statistics(
    ov_model,
    sites: Sequence[WeightSite],
    samples: Sequence[np.ndarray],
    raw_rows: int = 512,
    progress: bool = False,
    cache_path: str | Path | None = None,
    gram_block: int = 0,
    precision: str | None = None,
) -> dict[str, ActivationStats]:
    """Statistics of each MatMul site's input, keyed by site name (sites sharing an input share the object).

    ``raw_rows``: rows of raw activations kept per input in all (0: none);
    ``gram_block``: collect the block diagonal of ``X^T X`` with blocks of
    ``gcd(C, gram_block)`` channels (0: no); ``precision``: inference
    precision of the pass (default :data:`PRECISION`).
    """
    precision = precision if precision is not None else PRECISION
    matmuls = [s for s in sites if s.kind == "matmul"]
    nodes = ops_by_name(ov_model)
    key_of = {s.name: activation_source(nodes[s.op_names[0]]) for s in matmuls}
    position = topological_positions(ov_model)
    keys = sorted(dict.fromkeys(key_of.values()), key=lambda key: position[key[0]])
    if cache_path is not None:
        cached = _load(cache_path, key_of, samples, raw_rows, gram_block, precision)
        if cached is not None:
            return cached
    channels = {key: activation_channels(nodes, key) for key in keys}
    blocks = {key: math.gcd(channels[key], gram_block) if gram_block else 0 for key in keys}
    stats = {key: ActivationStats(channels=channels[key], gram_block=blocks[key]) for key in keys}
    per_sample_rows = max(1, raw_rows // max(len(samples), 1)) if raw_rows else 0
    batches = sample_batches(samples)
    segments = statistics_segments(ov_model, [keys[i : i + SOURCES_PER_SEGMENT]
                                              for i in range(0, len(keys), SOURCES_PER_SEGMENT)])
    logger.info("Statistics pass: %d activations in %d segments, one compiled at a time.", len(keys), len(segments))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(segments) * len(samples), desc="Collecting statistics", unit="sample")
    carried: list[np.ndarray] = []  # the current segment's start value, per batch
    for index, (start, sources) in enumerate(segments):
        end = segments[index + 1][0] if index + 1 < len(segments) else None
        probes = [Probe(key, moments=True, gram_block=blocks[key], rows=raw_rows > 0) for key in sources]
        stats_model, layout = statistics_model(ov_model, probes, boundary_in=start, boundary_out=end)
        runner = StatisticsRunner(stats_model, precision)  # compiles this segment's weights only
        del stats_model
        reached: list[np.ndarray] = []
        for number, batch in enumerate(batches):
            ids = stack_samples(samples, batch)
            extra = {ROWS_INPUT: _row_positions(ids.shape[1], per_sample_rows, number)} if raw_rows else {}
            if start is not None:
                extra[BOUNDARY_INPUT] = carried[number]
            outputs = runner.run(ids, extra)
            for key in sources:
                st = stats[key]
                st.add_moments(outputs[layout[(key, "moments")]], ids.shape[1])
                if st.gram_block:
                    st.add_gram(outputs[layout[(key, "gram")]])
                if raw_rows:
                    st.add_rows(outputs[layout[(key, "rows")]])
            if end is not None:
                reached.append(outputs[layout[("boundary", "boundary")]])
            if bar is not None:
                bar.update(len(batch))
        del runner
        carried = reached
    if bar is not None:
        bar.close()
    if cache_path is not None:
        _save(cache_path, key_of, stats, samples, raw_rows, gram_block, precision)
    return {name: stats[key] for name, key in key_of.items()}


def _fingerprint(key_of: dict, samples: Sequence[np.ndarray], raw_rows: int, gram_block: int, precision) -> str:
    h = hashlib.sha256()
    for name in sorted(key_of):
        h.update(f"{name}={key_of[name]};".encode())
    for ids in samples:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(f"{raw_rows}/{gram_block}/{precision}/{BATCH_TOKENS}/segments of {SOURCES_PER_SEGMENT}".encode())
    return h.hexdigest()


def _save(path, key_of, stats, samples, raw_rows, gram_block, precision) -> None:
    arrays = {"fingerprint": np.array(_fingerprint(key_of, samples, raw_rows, gram_block, precision))}
    for i, (key, st) in enumerate(stats.items()):
        arrays[f"{i}/key"] = np.array(f"{key[0]}:{key[1]}")
        for name in ("sum", "sum_sq", "sum_abs", "max_abs"):
            arrays[f"{i}/{name}"] = getattr(st, name)
        arrays[f"{i}/meta"] = np.array([st.channels, st.n_tokens])
        arrays[f"{i}/per_sample"] = np.array([st.sample_mean_var, st.sample_max_var, st.sample_mean_absmax])
        arrays[f"{i}/rows"] = st.rows
        if st.gram is not None:
            arrays[f"{i}/gram"] = st.gram
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")  # concurrent writers (tune jobs) each have their own
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load(path, key_of, samples, raw_rows, gram_block, precision) -> dict[str, ActivationStats] | None:
    path = Path(path)
    if not path.is_file():
        return None
    data = np.load(path)
    if str(data["fingerprint"]) != _fingerprint(key_of, samples, raw_rows, gram_block, precision):
        logger.info("Statistics cache %s was made for other data or another model; collecting anew.", path)
        return None
    stats = {}
    i = 0
    while f"{i}/key" in data:
        node, index = str(data[f"{i}/key"]).rsplit(":", 1)
        channels, n_tokens = (int(v) for v in data[f"{i}/meta"])
        per_sample = data[f"{i}/per_sample"]
        stats[(node, int(index))] = ActivationStats(
            channels=channels, n_tokens=n_tokens, sum=data[f"{i}/sum"], sum_sq=data[f"{i}/sum_sq"],
            sum_abs=data[f"{i}/sum_abs"], max_abs=data[f"{i}/max_abs"],
            sample_mean_var=list(per_sample[0]), sample_max_var=list(per_sample[1]),
            sample_mean_absmax=list(per_sample[2]), raw=[data[f"{i}/rows"]],
            gram_block=int(data[f"{i}/gram"].shape[-1]) if f"{i}/gram" in data else 0,
            gram=data[f"{i}/gram"] if f"{i}/gram" in data else None,
        )
        i += 1
    logger.info("Reusing activation statistics from %s.", path)
    return {name: stats[key] for name, key in key_of.items()}
