"""The ``export``, ``compress``, ``eval`` and ``report`` commands (heavy imports happen here, on demand)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ..config import WeightCompressionConfig
from ..errors import OptimumWCError
from ..layout import IR_XML, REPORT_FILE
from .options import UsageError, check_output_dir, config_from_args, export_model_arg, resolve_task


# -- console ------------------------------------------------------------------


class Console:
    """Progress lines on stderr (unless quiet), results on stdout, and tqdm only on a terminal."""

    def __init__(self, args: argparse.Namespace):
        self.verbose = bool(getattr(args, "verbose", False))
        self.quiet = bool(getattr(args, "quiet", False))
        self.progress = not self.quiet and sys.stderr.isatty()
        self._start = time.perf_counter()
        _configure_logging(self.verbose, self.quiet)

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self._start:6.1f}s] {message}", file=sys.stderr, flush=True)

    @staticmethod
    def out(text: str = "") -> None:
        print(text, flush=True)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    """Our logger at INFO with --verbose, else WARNING; third-party chatter down unless --verbose."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("optimum_wc")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "optimum", "nncf", "torch", "huggingface_hub", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _quiet_third_party(progress: bool = False) -> None:
    """After transformers/optimum are imported: keep their loggers at ERROR (they reset levels on import).

    Without ``progress`` (quiet, or not a terminal) their progress bars are turned off too.
    """
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        if not progress:
            tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    if not progress:  # also the bars of libraries that use tqdm directly (e.g. the GGUF conversion)
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"
    for name in ("optimum", "optimum.exporters", "optimum.intel", "nncf"):
        logging.getLogger(name).setLevel(logging.ERROR)


# -- export -----------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> dict:
    """``optimum-wc export`` / ``optimum-cli export openvino-wc``."""
    model = export_model_arg(args) if hasattr(args, "model_pos") else args.model
    config = config_from_args(args)  # usage errors before any heavy import
    task = resolve_task(args.task, model)
    output = Path(args.output)
    check_output_dir(output)
    console = Console(args)
    from ..export.float_ir import check_model_source
    from ..export.pipeline import export_folder

    check_model_source(model, args.trust_remote_code, allow_pickle=args.allow_pickle)  # fails before any message
    console.say(f"Exporting {model} -> {output} ({_describe(config)})")

    if not console.verbose:
        _quiet_third_party(console.progress)
    start = time.perf_counter()
    export_folder(model, output, config, task=task, trust_remote_code=args.trust_remote_code,
                  progress=console.progress, mxfp4_experts=args.mxfp4_experts, allow_pickle=args.allow_pickle)
    console.say(f"Done in {time.perf_counter() - start:.1f} s")
    return _print_summary(output, console)


def _describe(config: WeightCompressionConfig | None) -> str:
    if config is None:
        return "weights kept float"
    gs = config.effective_group_size
    parts = [config.mode.value, f"group size {gs}" if gs != -1 else "per-channel"]
    if config.ratio != 1:
        parts.append(f"ratio {config.ratio} (backup {config.effective_backup_mode.value})")
    parts += [name.replace("_", " ") for name in ("awq", "scale_estimation", "gptq", "lora_correction") if getattr(config, name)]
    return ", ".join(parts)


def _print_summary(output: Path, console: Console) -> dict:
    from ..report import summary

    path = output / REPORT_FILE
    report = json.loads(path.read_text()) if path.is_file() else {}
    if report:
        console.out(summary(report))
    console.out(f"Saved to {output}" + (f" (report: {path})" if report else ""))
    return report


# -- compress -----------------------------------------------------------------


def cmd_compress(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    if config is None:
        raise UsageError("--weight-format fp32 asks for no compression; choose int8 or int4 (or copy the folder).")
    from ..export.pipeline import check_ir_input, compress_ir_folder

    input_dir, output = Path(args.input), Path(args.output)
    check_ir_input(input_dir)
    check_output_dir(output)
    console = Console(args)
    console.say(f"Compressing {input_dir} -> {output} ({_describe(config)})")
    if not console.verbose:
        _quiet_third_party(console.progress)
    start = time.perf_counter()
    compress_ir_folder(input_dir, output, config, progress=console.progress)
    console.say(f"Done in {time.perf_counter() - start:.1f} s")
    return _print_summary(output, console)


# -- eval -------------------------------------------------------------------


def _check_ir_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise OptimumWCError(f"{what} {str(path)!r} not found; pass an OpenVINO IR folder.")
    if not (path / IR_XML).is_file():
        raise OptimumWCError(f"{what} {path} holds no {IR_XML}; pass an OpenVINO IR folder (see `optimum-wc export`).")


def eval_text(args: argparse.Namespace) -> tuple[str, str]:
    """(text, description) from ``--text``, ``--dataset`` or the built-in sample."""
    from .. import evaluation

    if getattr(args, "text", None):
        return evaluation.load_text(args.text), str(args.text)
    if getattr(args, "dataset", None):
        text = evaluation.load_dataset_text(args.dataset, args.dataset_config, args.split, args.column)
        return text, f"{args.dataset} ({args.split}/{args.column})"
    return evaluation.sample_text(), "built-in sample (Pride and Prejudice, chapters 1-4)"


def cmd_eval(args: argparse.Namespace) -> dict:
    from .. import evaluation

    for name in ("tokens", "window"):
        if getattr(args, name) < 2:
            raise UsageError(f"--{name} {getattr(args, name)} is too small; use at least 2 (e.g. --{name} 512).")
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be >= 0.")
    model_dir = Path(args.model_dir)
    reference = Path(args.reference) if args.reference else None
    _check_ir_dir(model_dir, "model folder")
    if reference is not None:
        from ..export.reference import check_reference

        check_reference(reference, args.allow_pickle)
    console = Console(args)
    text, source = eval_text(args)
    if not console.verbose:
        _quiet_third_party(console.progress)
    from ..calibration.samples import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    tokens = evaluation.tokenize_prefix(tokenizer, text, args.tokens)
    irs = {"model": model_dir}
    if reference is not None:  # a checkpoint: its float IR, exported once into the cache
        from ..export.reference import reference_ir

        irs["reference"] = reference_ir(reference, progress=console.progress, say=console.say,
                                        allow_pickle=args.allow_pickle)
    console.say(f"Evaluating {model_dir} on {len(tokens)} tokens of {source}"
                + (f" against {reference}" if reference else ""))
    names = {"model": model_dir}
    models = {"model": evaluation.compile_model(model_dir)}
    compiled_ref = None
    if reference is not None:
        names["reference"] = reference
        models["reference"] = compiled_ref = evaluation.compile_model(irs["reference"])
    results = evaluation.evaluate_many(models, tokens, compiled_ref, window=args.window, progress=console.progress)
    rows = {key: r.to_dict() for key, r in results.items()}
    del models, compiled_ref
    if args.max_new_tokens:
        prompt = evaluation.chat_prompt_ids(tokenizer, args.prompt)
        eos = evaluation.eos_ids(tokenizer, model_dir)
        for key, path in names.items():
            console.say(f"Generating {args.max_new_tokens} tokens with {path}")
            gen = evaluation.greedy_generate(irs[key], prompt, args.max_new_tokens, eos)
            rows[key]["tokens_per_s"] = gen.tokens_per_s
            rows[key]["answer"] = tokenizer.decode(gen.tokens, skip_special_tokens=True).strip()
    for key, path in names.items():
        rows[key]["path"] = str(path)
        rows[key]["size_bytes"] = evaluation.ir_size(irs[key])
        if irs[key] != path:
            rows[key]["ir_path"] = str(irs[key])
    result = {"text": source, "tokens": int(len(tokens)), "window": args.window, "prompt": args.prompt, "models": rows}
    console.out(format_eval_table([(str(names[k]), rows[k]) for k in rows]))
    if args.max_new_tokens:
        console.out(f"\nQ: {args.prompt}")
        for key in rows:
            console.out(f"{str(names[key])}: {rows[key]['answer']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        console.say(f"Results written to {args.json}")
    return result


def _fmt(value: Any, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_eval_table(rows: list[tuple[str, dict]]) -> str:
    """Rows of name -> metrics (size_bytes, perplexity, top1_agreement, kl_divergence, tokens_per_s)."""
    from ..report import _table

    body = []
    for name, r in rows:
        body.append([
            name,
            _fmt(None if r.get("size_bytes") is None else r["size_bytes"] / 2**20, ".1f"),
            _fmt(r.get("perplexity"), ".3f"),
            _fmt(None if r.get("top1_agreement") is None else 100 * r["top1_agreement"], ".1f"),
            _fmt(r.get("kl_divergence"), ".4f" if (r.get("kl_divergence") or 0) >= 1e-3 or not r.get("kl_divergence") else ".1e"),
            _fmt(r.get("tokens_per_s"), ".1f"),
        ])
    return _table(["model", "size (MiB)", "perplexity", "top-1 agree (%)", "KL (nats)", "tokens/s"], body,
                  right=(1, 2, 3, 4, 5))


# -- report -------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> dict:
    from ..report import layer_table, report_from_dir, summary

    model_dir = Path(args.model_dir)
    _check_ir_dir(model_dir, "model folder")
    Console(args)
    report = report_from_dir(model_dir)
    if args.json:
        Console.out(json.dumps(report, indent=2))
        return report
    if not report["compressed"]:
        Console.out(f"{model_dir} was not compressed by optimum-wc (no optimum_wc rt_info in its IR).")
    if args.layers and report["layers"]:
        Console.out(layer_table(report))
        Console.out()
    Console.out(summary(report))
    return report
