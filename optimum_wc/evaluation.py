"""Quality and speed of an exported LLM, measured with OpenVINO directly.

Small functions that the CLI (``optimum-wc eval`` / ``demo``), the examples
and the benchmark share:

* text in: :func:`load_text` (a file, or a folder of ``.txt`` files),
  :func:`load_dataset_text` (a ``datasets`` dataset), :func:`sample_text`
  (a public-domain excerpt shipped with the package);
* tokenise once: :func:`tokenize_prefix` gives the first N token ids;
* :func:`split_windows`: non-overlapping windows (512 tokens by default);
* :func:`evaluate`: perplexity of a model, and top-1 agreement and KL
  divergence against a reference model, window by window with a fresh KV
  cache per window (stateful IR: ``input_ids``, ``attention_mask``,
  ``position_ids``, ``beam_idx``; ``request.reset_state()``);
* :func:`greedy_generate`: greedy decoding with the same stateful request,
  with its tokens/s; :func:`chat_prompt_ids` applies the chat template.

Accuracy runs with f32 activations and KV cache so that it shows the weight
compression error alone; speed runs with the CPU plugin's defaults.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .calibration.runners import stateful_inputs
from .errors import OptimumWCError
from .layout import IR_BIN, IR_XML

__all__ = [
    "ACCURACY_PROPERTIES",
    "EvalResult",
    "GenerationResult",
    "chat_prompt_ids",
    "compile_model",
    "eos_ids",
    "evaluate_many",
    "evaluate",
    "greedy_generate",
    "ir_size",
    "load_dataset_text",
    "load_text",
    "model_inputs",
    "sample_text",
    "split_windows",
    "tokenize_prefix",
    "window_logits",
]

ACCURACY_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
DEFAULT_WINDOW = 512
_CHUNK = 64  # rows of logits converted to float64 at once
SAMPLE_TEXT_FILE = Path(__file__).resolve().parent / "data" / "pride_and_prejudice_ch1-4.txt"


# -- text -------------------------------------------------------------------


def sample_text() -> str:
    """Chapters 1-4 of *Pride and Prejudice* (public domain), about 6,000 tokens."""
    return SAMPLE_TEXT_FILE.read_text(encoding="utf-8")


def load_text(path: str | Path) -> str:
    """The text of a file, or of every ``.txt`` file of a folder (sorted by name, blank-line separated)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise OptimumWCError(f"the folder {path} holds no .txt file; pass a text file or a folder of .txt files.")
    elif path.is_file():
        files = [path]
    else:
        raise OptimumWCError(f"text file {str(path)!r} not found; pass an existing text file or folder.")
    try:
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    except OSError as exc:
        raise OptimumWCError(f"cannot read {path}: {exc.strerror or exc}.") from exc
    text = "\n\n".join(t.strip("\n") for t in texts)
    if not text.strip():
        raise OptimumWCError(f"{path} holds no text; pass a non-empty text file.")
    return text


def load_dataset_text(name: str, config: str | None = None, split: str = "test", column: str = "text") -> str:
    """The ``column`` of a ``datasets`` dataset (a name in the local cache, or a folder), joined by blank lines.

    ``name`` may be a folder written by ``Dataset.save_to_disk``, a local
    data file (``.json``/``.jsonl``/``.csv``/``.parquet``/``.txt``), or a
    dataset name available offline in the ``datasets`` cache.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a test/demo dependency
        raise OptimumWCError("the `datasets` package is not installed; pip install datasets, or pass --text FILE.") from exc
    path = Path(name)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        elif path.is_file():
            builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(path.suffix)
            if builder is None:
                raise OptimumWCError(f"{path} is not a .json/.jsonl/.csv/.parquet/.txt data file.")
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except OptimumWCError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (offline, missing split, ...)
        raise OptimumWCError(f"cannot load the dataset {name!r}: {_one_line(exc)}") from exc
    if column not in ds.column_names:
        raise OptimumWCError(f"the dataset {name!r} has no column {column!r}; its columns are {ds.column_names}.")
    text = "\n\n".join(t for t in ds[column] if isinstance(t, str) and t.strip())
    if not text:
        raise OptimumWCError(f"the column {column!r} of the dataset {name!r} holds no text.")
    return text


def tokenize_prefix(tokenizer, text: str, n_tokens: int | None) -> np.ndarray:
    """The first ``n_tokens`` token ids of ``text`` (no special tokens; all of them with None).

    Only a prefix of a long text is tokenised (doubling until it is enough).
    """
    if n_tokens is None:
        return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    chars = max(4096, n_tokens * 8)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) > n_tokens + 64 or chars >= len(text):
            return np.asarray(ids[:n_tokens], dtype=np.int64)
        chars *= 2


def split_windows(tokens: np.ndarray, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """Non-overlapping windows ``[n_windows, window]``; a shorter tail is dropped.

    A text shorter than one window gives a single window of all its tokens.
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if len(tokens) < 2:
        raise OptimumWCError(f"{len(tokens)} evaluation token(s): at least 2 are needed; pass a longer text.")
    if len(tokens) < window:
        return tokens[None]
    n = len(tokens) // window
    return tokens[: n * window].reshape(n, window)


# -- OpenVINO inference ---------------------------------------------------


def compile_model(model_dir: str | Path, accuracy: bool = True, device: str = "CPU"):
    """Compile ``model_dir/openvino_model.xml``; ``accuracy=True`` runs f32 activations and KV cache."""
    import openvino as ov

    xml = Path(model_dir) / IR_XML
    if not xml.is_file():
        hint = (" It is a Transformers checkpoint: optimum_wc.reference_ir(folder) gives its float IR (exported once, "
                "cached).") if (Path(model_dir) / "config.json").is_file() else ""
        raise OptimumWCError(f"{model_dir} holds no {IR_XML}; pass a folder written by optimum-wc or optimum-cli.{hint}")
    core = ov.Core()
    return core.compile_model(core.read_model(xml), device, ACCURACY_PROPERTIES if accuracy else {})


def ir_size(model_dir: str | Path) -> int:
    """Bytes of ``openvino_model.bin`` (the weights)."""
    return (Path(model_dir) / IR_BIN).stat().st_size


def model_inputs(input_ids: np.ndarray, start: int, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Inputs of one call of a stateful causal LM: ``input_ids`` continuing a sequence ``start`` tokens long."""
    return stateful_inputs(np.asarray(input_ids, dtype=np.int64).reshape(1, -1), start, names)


def _input_names(compiled) -> set[str]:
    return {name for port in compiled.inputs for name in port.get_names()}


def _check_stateful(compiled) -> None:
    names = _input_names(compiled)
    if "input_ids" not in names or any(n.startswith("past_key_values") for n in names):
        raise OptimumWCError(
            "the model is not a stateful causal LM (inputs: " + ", ".join(sorted(names)) + "); "
            "export it with optimum-wc or `optimum-cli export openvino` without --disable-stateful."
        )


def window_logits(request, ids: np.ndarray, names: Iterable[str] | None = None) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of one window, from a fresh KV cache (a copy, float32)."""
    request.reset_state()
    request.infer(model_inputs(ids, 0, names))
    return np.array(request.get_tensor("logits").data[0], dtype=np.float32)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class EvalResult:
    """Quality over ``n_predicted`` next-token predictions (``window - 1`` per window)."""

    perplexity: float
    n_tokens: int
    n_predicted: int
    n_windows: int
    window: int
    top1_agreement: float | None = None  # share of positions where the argmax equals the reference's
    kl_divergence: float | None = None  # mean KL(reference || model) per position, in nats
    seconds: float = 0.0
    argmax: np.ndarray | None = field(default=None, repr=False)  # [windows, window - 1] with keep_argmax

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "argmax"}


def evaluate(
    model: Any,
    tokens: np.ndarray,
    reference: Any | None = None,
    *,
    window: int = DEFAULT_WINDOW,
    progress: bool = False,
) -> EvalResult:
    """Perplexity of ``model`` on ``tokens``, and agreement with ``reference`` if given.

    ``model`` and ``reference`` are folders or compiled models.  The windows
    are non-overlapping; in each, the logits at positions ``0 .. w-2``
    predict tokens ``1 .. w-1`` from a fresh state.  Both models run window
    by window in lockstep, so only one window of reference logits is kept.
    """
    return evaluate_many({"model": model}, tokens, reference, window=window, progress=progress)["model"]


def evaluate_many(
    models: Mapping[str, Any],
    tokens: np.ndarray,
    reference: Any | None = None,
    *,
    window: int = DEFAULT_WINDOW,
    progress: bool = False,
    reference_argmax: np.ndarray | None = None,
    keep_argmax: bool = False,
) -> dict[str, EvalResult]:
    """:func:`evaluate` for several models against one reference (its logits computed once per window), or
    against ``reference_argmax`` (an earlier result's ``argmax``, kept with ``keep_argmax``; no KL then)."""
    start = time.perf_counter()
    compiled = {name: compile_model(m) if isinstance(m, (str, Path)) else m for name, m in models.items()}
    ref = compile_model(reference) if isinstance(reference, (str, Path)) else reference
    for c in [*compiled.values(), *([ref] if ref is not None else [])]:
        _check_stateful(c)
    requests = {name: (None if c is ref else c.create_infer_request(), _input_names(c)) for name, c in compiled.items()}
    ref_request = (ref.create_infer_request(), _input_names(ref)) if ref is not None else None
    windows = split_windows(tokens, window)
    nll = {name: 0.0 for name in compiled}
    agree = {name: 0 for name in compiled}
    kl = {name: 0.0 for name in compiled}
    argmax: dict[str, list[np.ndarray]] = {name: [] for name in compiled}
    shape = (len(windows), windows.shape[1] - 1)
    if reference_argmax is not None and (ref is not None or reference_argmax.shape != shape):
        raise ValueError(f"pass a reference model, or its argmax of shape {shape}")
    n_predicted = 0
    iterator: Iterable = windows
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(windows, desc="Evaluating", unit="window", leave=False)
    for w, ids in enumerate(iterator):
        targets = ids[1:]
        ref_logits = window_logits(ref_request[0], ids, ref_request[1])[:-1] if ref_request is not None else None
        for name, (request, names) in requests.items():
            # a model that is the reference itself reuses its logits
            logits = ref_logits if compiled[name] is ref else window_logits(request, ids, names)[:-1]
            for lo in range(0, len(targets), _CHUNK):  # float64 maths on a few rows at a time
                hi = min(lo + _CHUNK, len(targets))
                logp = _log_softmax(logits[lo:hi])
                nll[name] -= float(logp[np.arange(hi - lo), targets[lo:hi]].sum())
                top = logp.argmax(axis=-1)
                if keep_argmax:
                    argmax[name].append(top.astype(np.int32))
                if ref_logits is not None:
                    ref_logp = _log_softmax(ref_logits[lo:hi])
                    agree[name] += int((top == ref_logp.argmax(axis=-1)).sum())
                    kl[name] += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
                elif reference_argmax is not None:
                    agree[name] += int((top == reference_argmax[w, lo:hi]).sum())
            del logits
        n_predicted += len(targets)
    seconds = time.perf_counter() - start
    results = {}
    for name in compiled:
        results[name] = EvalResult(
            perplexity=float(np.exp(nll[name] / n_predicted)),
            n_tokens=int(windows.size),
            n_predicted=n_predicted,
            n_windows=len(windows),
            window=int(windows.shape[1]),
            top1_agreement=agree[name] / n_predicted if ref is not None or reference_argmax is not None else None,
            kl_divergence=kl[name] / n_predicted if ref is not None else None,
            seconds=seconds,
            argmax=np.concatenate(argmax[name]).reshape(len(windows), -1) if keep_argmax else None,
        )
    return results


# -- generation -------------------------------------------------------------


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    text: str | None = None


def greedy_generate(
    compiled,
    prompt_ids: Sequence[int] | np.ndarray,
    max_new_tokens: int = 64,
    eos_token_ids: Iterable[int] = (),
    *,
    warmup: bool = True,
) -> GenerationResult:
    """Greedy decoding with a stateful model: prefill the prompt, then one token per call.

    Stops at ``max_new_tokens`` or an end-of-sequence token.  tokens/s
    counts the generated tokens over the whole time, prefill included; a
    short untimed run warms the request up first.
    """
    if isinstance(compiled, (str, Path)):
        compiled = compile_model(compiled, accuracy=False)
    _check_stateful(compiled)
    request = compiled.create_infer_request()
    names = _input_names(compiled)
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    eos = set(int(t) for t in eos_token_ids)
    if warmup:
        _greedy(request, names, prompt, min(4, max_new_tokens), set())
    start = time.perf_counter()
    tokens = _greedy(request, names, prompt, max_new_tokens, eos)
    seconds = time.perf_counter() - start
    return GenerationResult(tokens=tokens, tokens_per_s=len(tokens) / seconds if seconds > 0 else 0.0, seconds=seconds)


def _greedy(request, names, prompt: np.ndarray, max_new_tokens: int, eos: set[int]) -> list[int]:
    request.reset_state()
    request.infer(model_inputs(prompt, 0, names))
    length, out = len(prompt), []
    while len(out) < max_new_tokens:
        token = int(request.get_tensor("logits").data[0, -1].argmax())
        out.append(token)
        if token in eos or len(out) == max_new_tokens:
            break
        request.infer(model_inputs(np.array([token]), length, names))
        length += 1
    return out


def chat_prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of ``question`` as a user turn with the chat template (the bare text without one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(question)["input_ids"])


def eos_ids(tokenizer, model_dir: str | Path | None = None) -> list[int]:
    """End-of-sequence ids: the tokenizer's, plus ``generation_config.json``'s if present."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if model_dir is not None:
        import json

        gen = Path(model_dir) / "generation_config.json"
        if gen.is_file():
            try:
                value = json.loads(gen.read_text()).get("eos_token_id")
            except ValueError:
                value = None
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, int):
                    ids.add(v)
    return sorted(ids)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."
