"""Running an exported stateful causal-LM IR: full-sequence passes and sampling."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def stateful_inputs(ids: np.ndarray, past: int, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Inputs of one call: ``ids`` [batch, n] continuing sequences already ``past`` tokens long.

    With ``names``, only the inputs the model has are kept (``position_ids``
    and ``beam_idx`` are optional in optimum-intel's stateful IRs).
    """
    batch, n = ids.shape
    feed = {
        "input_ids": np.asarray(ids, dtype=np.int64),
        "attention_mask": np.ones((batch, past + n), dtype=np.int64),
        "position_ids": np.broadcast_to(np.arange(past, past + n, dtype=np.int64), (batch, n)).copy(),
        "beam_idx": np.arange(batch, dtype=np.int32),
    }
    if names is not None:
        names = set(names)
        feed = {k: v for k, v in feed.items() if k in names}
    return feed


class StatefulRunner:
    """Compile an optimum-intel causal LM IR once and feed it token ids (fresh KV state per call)."""

    def __init__(self, ov_model: Any, precision: str = "f32", properties: dict[str, str] | None = None):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": precision, **(properties or {})}
        self.compiled = ov.Core().compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = {name for port in self.compiled.inputs for name in port.get_names()}

    def _feed(self, ids: np.ndarray, past: int) -> dict[str, np.ndarray]:
        return stateful_inputs(ids, past, self.input_names)

    def run(self, ids: np.ndarray) -> Any:
        """One pass over ``ids`` [batch, tokens] from an empty cache; returns the request's results."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        self.request.reset_state()
        return self.request.infer(self._feed(ids, 0))

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.run(ids)["logits"].copy()

    def sample(self, start: np.ndarray, new_tokens: int, rng: np.random.Generator, top_k: int = 20) -> list[np.ndarray]:
        """Continue each row of ``start`` by ``new_tokens`` tokens sampled from the top ``top_k``."""
        self.request.reset_state()
        tokens = np.asarray(start, dtype=np.int64)
        out = [tokens]
        step, past = tokens, 0
        for _ in range(new_tokens):
            logits = self.request.infer(self._feed(step, past))["logits"][:, -1, :].astype(np.float64)
            past += step.shape[1]
            top = np.argpartition(-logits, top_k, axis=1)[:, :top_k]
            top_logits = np.take_along_axis(logits, top, axis=1)
            probs = np.exp(top_logits - top_logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            choice = np.array([rng.choice(top_k, p=p) for p in probs])
            step = top[np.arange(top.shape[0]), choice][:, None]
            out.append(step)
        full = np.concatenate(out, axis=1)
        return [row.copy() for row in full]


class StatisticsRunner:
    """Compile a statistics model (:func:`optimum_wc.ir.probes.statistics_model`) and run it on token batches.

    ``precision`` None keeps the CPU plugin's default inference precision
    (bf16 where the CPU has it, as NNCF's statistics passes run); the
    reductions themselves run in float32.
    """

    def __init__(self, ov_model: Any, precision: str | None = None):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.compiled = ov.Core().compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = {name for port in self.compiled.inputs for name in port.get_names()}
        self.stateful = bool(self.request.query_state())

    def run(self, ids: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Outputs (in model order) for ``ids`` [batch, tokens] from an empty cache."""
        if self.stateful:
            self.request.reset_state()
        feed = stateful_inputs(np.asarray(ids, dtype=np.int64), 0, self.input_names)
        feed.update({k: v for k, v in (extra or {}).items() if k in self.input_names})
        results = self.request.infer(feed)
        return [np.array(results[port]) for port in self.compiled.outputs]
