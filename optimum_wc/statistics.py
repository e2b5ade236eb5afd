"""Activation statistics of every weighted MatMul's input, reduced on the fly.

The float IR is run once per calibration sample (fresh KV state each time)
with the MatMul inputs added as extra outputs.  Each input tensor
``X [tokens, C]`` is folded into running per-channel sums at once, so memory
does not grow with samples x sequence length.  Algorithms that need raw rows
(AWQ, scale estimation) get a bounded, deterministic subsample: at most
``raw_rows`` rows per input in all, spread evenly over the samples.
"""

from __future__ import annotations

import hashlib
import math
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .graph import WeightSite, activation_source, ops_by_name

logger = logging.getLogger("optimum_wc")


@dataclass
class ActivationStats:
    """Running statistics of one activation tensor (the input of one or more MatMuls)."""

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
    gram_block: int = 0  # > 0: accumulate the block-diagonal of X^T X with blocks of this size
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

    def update(self, x: np.ndarray, raw_rows: int) -> None:
        x = x.reshape(-1, self.channels).astype(np.float32, copy=False)
        self.n_tokens += x.shape[0]
        self.sum += x.sum(axis=0, dtype=np.float64)
        sq = np.square(x, dtype=np.float32)
        self.sum_sq += sq.sum(axis=0, dtype=np.float64)
        ax = np.abs(x)
        self.sum_abs += ax.sum(axis=0, dtype=np.float64)
        np.maximum(self.max_abs, ax.max(axis=0), out=self.max_abs)
        var = x.var(axis=0, dtype=np.float64)
        self.sample_mean_var.append(float(var.mean()))
        self.sample_max_var.append(float(var.max()))
        self.sample_mean_absmax.append(float(ax.max(axis=0).mean()))
        if self.gram is not None:
            b = self.gram_block
            for i in range(self.channels // b):
                block = x[:, i * b : (i + 1) * b]
                self.gram[i] += block.T @ block
        if raw_rows > 0:
            # positions drawn uniformly (seeded by the sample count so far): no bias towards the first token
            rng = np.random.default_rng(len(self.sample_mean_var))
            idx = np.sort(rng.choice(x.shape[0], size=min(raw_rows, x.shape[0]), replace=False))
            self.raw.append(x[idx].copy())

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


def collect_statistics(
    ov_model,
    sites: Sequence[WeightSite],
    samples: Sequence[np.ndarray],
    raw_rows: int = 512,
    progress: bool = False,
    cache_path: str | Path | None = None,
    gram_block: int = 0,
) -> dict[str, ActivationStats]:
    """Statistics of each MatMul site's input, keyed by site name (sites sharing an input share the object)."""
    matmuls = [s for s in sites if s.kind == "matmul"]
    nodes = ops_by_name(ov_model)
    key_of = {s.name: activation_source(nodes[s.op_names[0]]) for s in matmuls}
    if cache_path is not None:
        cached = _load(cache_path, key_of, samples, raw_rows, gram_block)
        if cached is not None:
            return cached
    from .inference import StatefulRunner

    stats_model = ov_model.clone()
    by_name = {op.get_friendly_name(): op for op in stats_model.get_ops()}
    keys = list(dict.fromkeys(key_of.values()))
    outputs = stats_model.add_outputs([by_name[node].output(index) for node, index in keys])
    n_base = len(stats_model.outputs) - len(outputs)
    runner = StatefulRunner(stats_model)
    ports = {key: runner.compiled.outputs[n_base + i] for i, key in enumerate(keys)}
    per_sample_rows = max(1, raw_rows // max(len(samples), 1)) if raw_rows else 0
    stats: dict[Any, ActivationStats] = {}
    iterator = samples
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(samples, desc="Collecting statistics", unit="sample")
    for ids in iterator:
        results = runner.run(ids)
        for key, port in ports.items():
            x = results[port]
            if key not in stats:
                channels = int(x.shape[-1])
                block = math.gcd(channels, gram_block) if gram_block else 0
                stats[key] = ActivationStats(channels=channels, gram_block=block)
            stats[key].update(x, per_sample_rows)
    del runner, stats_model
    out = {name: stats[key] for name, key in key_of.items()}
    if cache_path is not None:
        _save(cache_path, key_of, stats, samples, raw_rows, gram_block)
    return out


def _fingerprint(key_of: dict, samples: Sequence[np.ndarray], raw_rows: int, gram_block: int) -> str:
    h = hashlib.sha256()
    for name in sorted(key_of):
        h.update(f"{name}={key_of[name]};".encode())
    for ids in samples:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(f"{raw_rows}/{gram_block}".encode())
    return h.hexdigest()


def _save(path, key_of, stats, samples, raw_rows, gram_block) -> None:
    arrays = {"fingerprint": np.array(_fingerprint(key_of, samples, raw_rows, gram_block))}
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
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load(path, key_of, samples, raw_rows, gram_block) -> dict[str, ActivationStats] | None:
    path = Path(path)
    if not path.is_file():
        return None
    data = np.load(path)
    if str(data["fingerprint"]) != _fingerprint(key_of, samples, raw_rows, gram_block):
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


# -- per-layer Hessians for GPTQ and LoRA correction, on the partially compressed model --------


@dataclass
class InputHessian:
    """``X^T X`` (float64 sums) of one activation over all calibration tokens."""

    channels: int
    n_tokens: int = 0
    xtx: np.ndarray = None

    def __post_init__(self) -> None:
        if self.xtx is None:
            self.xtx = np.zeros((self.channels, self.channels), dtype=np.float64)

    def update(self, x: np.ndarray) -> None:
        x = x.reshape(-1, self.channels).astype(np.float64)
        self.n_tokens += x.shape[0]
        self.xtx += x.T @ x

    @property
    def hessian(self) -> np.ndarray:
        """GPTQ's layer Hessian ``H = 2 X^T X / N``."""
        return self.xtx * (2.0 / max(self.n_tokens, 1))


def collect_hessians(
    ov_model, sources: Sequence[tuple[str, int]], samples: Sequence[np.ndarray]
) -> dict[tuple[str, int], InputHessian]:
    """``X^T X`` of each activation ``sources`` names ((producer, output index)), from one pass over ``samples``.

    The model is run as it is now (a clone with the activations added as
    outputs), so weights compressed earlier shape the inputs seen here.
    """
    from .inference import StatefulRunner

    model = ov_model.clone()
    by_name = ops_by_name(model)
    keys = list(dict.fromkeys(sources))
    added = model.add_outputs([by_name[node].output(index) for node, index in keys])
    n_base = len(model.outputs) - len(added)
    runner = StatefulRunner(model)
    ports = {key: runner.compiled.outputs[n_base + i] for i, key in enumerate(keys)}
    out: dict[tuple[str, int], InputHessian] = {}
    for ids in samples:
        results = runner.run(ids)
        for key, port in ports.items():
            x = results[port]
            out.setdefault(key, InputHessian(int(x.shape[-1]))).update(x)
    return out
