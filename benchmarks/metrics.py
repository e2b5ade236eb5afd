"""Quality and speed of a stateful LLM IR, run with OpenVINO directly (no optimum-intel).

The IR is the one optimum-intel exports with ``stateful=True``: inputs
``input_ids``, ``attention_mask``, ``position_ids`` (int64) and
``beam_idx`` (int32), output ``logits``, the KV cache kept in the infer
request's state.  Every function here is shared by all rows of the table
(float, NNCF, ours), so the rows differ only by the IR.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from optimum_wc.evaluation import model_inputs

# Accuracy is measured with f32 activations and KV cache, so that it shows the
# compression error alone; speed is measured with the CPU plugin's defaults.
ACCURACY_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


def split_windows(tokens: np.ndarray, window: int) -> np.ndarray:
    """Non-overlapping windows ``[n_windows, window]`` (a shorter tail is dropped)."""
    n = len(tokens) // window
    if n == 0:
        raise ValueError(f"{len(tokens)} evaluation tokens are fewer than one window of {window}")
    return np.asarray(tokens[: n * window], dtype=np.int64).reshape(n, window)


@dataclass
class QualityResult:
    """Summed negative log-likelihood over the predicted tokens, and the argmax predictions."""

    nll_sum: float
    n_predicted: int
    argmax: np.ndarray  # [n_windows, window - 1] int32: predicted next token at each position

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / self.n_predicted))


def _token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``targets`` under ``logits`` [n, vocab], in float64."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return log_z - logits[np.arange(len(targets)), targets]


def evaluate_quality(compiled, tokens: np.ndarray, window: int) -> QualityResult:
    """Perplexity and next-token argmax over non-overlapping windows, fresh state per window.

    In each window, the logits at positions ``0 .. window-2`` predict tokens
    ``1 .. window-1``; nothing is predicted across windows.
    """
    windows = split_windows(tokens, window)
    request = compiled.create_infer_request()
    nll_sum, n_predicted, argmax = 0.0, 0, []
    for ids in windows:
        request.reset_state()
        request.infer(model_inputs(ids, 0))
        logits = request.get_tensor("logits").data[0, :-1]
        nll_sum += float(_token_nll(logits, ids[1:]).sum())
        n_predicted += len(ids) - 1
        argmax.append(logits.argmax(axis=-1).astype(np.int32))
    return QualityResult(nll_sum, n_predicted, np.stack(argmax))


def greedy_generate(request, prompt: np.ndarray, new_tokens: int) -> list[int]:
    """Greedy decoding with the stateful model: prefill the prompt, then one token per call."""
    request.reset_state()
    request.infer(model_inputs(np.asarray(prompt), 0))
    length = len(prompt)
    out: list[int] = []
    while True:
        token = int(request.get_tensor("logits").data[0, -1].argmax())
        out.append(token)
        if len(out) == new_tokens:
            return out
        request.infer(model_inputs(np.array([token]), length))
        length += 1


def interleaved_speed(compiled: dict[str, object], prompt: np.ndarray, new_tokens: int, repeats: int) -> dict:
    """Tokens/s of greedy generation (prefill included) per model, median of ``repeats`` timed runs.

    The models take turns (ABAB..., reversed every other round), so a change
    in the machine's load during the measurement affects all of them alike.
    Each model first does one untimed run of the same length (a short warm-up
    left the first timed run 10-20% slow).  Also returns each model's
    generated tokens, to compare outputs between rows.
    """
    requests = {label: c.create_infer_request() for label, c in compiled.items()}
    for request in requests.values():
        greedy_generate(request, prompt, new_tokens)
    speeds: dict[str, list[float]] = {label: [] for label in requests}
    generated: dict[str, list[int]] = {}
    order = list(requests)
    for round_ in range(repeats):
        for label in order if round_ % 2 == 0 else reversed(order):
            start = time.perf_counter()
            generated[label] = greedy_generate(requests[label], prompt, new_tokens)
            speeds[label].append(new_tokens / (time.perf_counter() - start))
    return {
        label: {"tokens_per_s": statistics.median(runs), "runs_tokens_per_s": runs, "generated": generated[label]}
        for label, runs in speeds.items()
    }
