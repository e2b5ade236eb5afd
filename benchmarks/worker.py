"""Subprocess entry of the benchmark: one compression, or one evaluation, per process.

``python -m benchmarks.worker compress --engine ours|nncf --config NAME --float-ir DIR --out DIR --result F``
    read the float IR, compress it with one engine (timed alone), save it
    with ``compress_to_fp16=False``; the result holds the seconds, the peak
    RSS of this process and the size of ``openvino_model.bin``.

``python -m benchmarks.worker evaluate --ir DIR --tokens F --result F [--reference-argmax F] [--save-argmax F]``
    perplexity and top-1 agreement on the evaluation windows.

``python -m benchmarks.worker speed --ir DIR --label NAME [--ir DIR --label NAME ...] --tokens F --result F``
    greedy generation speed of each IR, timed in alternation so that the
    load of a shared machine weighs on all of them alike (see :mod:`benchmarks.metrics`).

Each writes its result as JSON to ``--result``; on failure it writes
``{"error": ...}`` there and exits with status 1.  Running each step in its
own process makes the peak RSS that of this one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .configs import CONFIGS, BenchConfig

IR_XML = "openvino_model.xml"
IR_BIN = "openvino_model.bin"
CALIB_SEQ_LEN = 128  # tokens per calibration sample of data-aware configs


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    ``VmHWM`` of /proc/self/status where there is one: ``getrusage``'s
    ``ru_maxrss`` is carried over fork and exec on Linux, so in a child it is
    at least the parent's RSS at the time of the fork (the benchmark's parent
    holds transformers and a tokenizer).  Elsewhere, ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def calibration_inputs(calib_tokens: np.ndarray, config: BenchConfig) -> list[dict[str, np.ndarray]]:
    """Model inputs of the calibration samples: consecutive chunks of the calibration tokens.

    The same list is given to both engines (wrapped in ``nncf.Dataset`` for NNCF).
    """
    from .metrics import model_inputs

    n = min(config.subset_size, len(calib_tokens) // CALIB_SEQ_LEN)
    if n == 0:
        raise ValueError(f"{len(calib_tokens)} calibration tokens are fewer than one sample of {CALIB_SEQ_LEN}")
    return [model_inputs(calib_tokens[i * CALIB_SEQ_LEN:(i + 1) * CALIB_SEQ_LEN], 0) for i in range(n)]


def _compressor(engine: str, config: BenchConfig, dataset: Any):
    """A function compressing an ``openvino.Model`` with ``engine``; imports happen here, before timing."""
    if engine == "ours":
        from optimum_wc import compress_model

        ours_config = config.ours(dataset)
        return lambda model: compress_model(model, ours_config, dataset)
    if engine == "nncf":
        import nncf

        kwargs = config.nncf_kwargs(dataset)
        return lambda model: nncf.compress_weights(model, **kwargs)
    raise ValueError(f"unknown engine {engine!r}; use 'ours' or 'nncf'")


def compress(args: argparse.Namespace) -> dict[str, Any]:
    """Read, compress (timed alone) and save one IR."""
    import openvino as ov

    config = CONFIGS[args.config]
    dataset = calibration_inputs(np.load(args.calib_tokens), config) if config.needs_data else None
    run = _compressor(args.engine, config, dataset)
    core = ov.Core()
    start = time.perf_counter()
    model = core.read_model(Path(args.float_ir) / IR_XML)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    model = run(model)
    compress_s = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ov.save_model(model, out / IR_XML, compress_to_fp16=False)
    save_s = time.perf_counter() - start
    return {
        "engine": args.engine,
        "config": config.name,
        "compress_s": compress_s,
        "read_s": read_s,
        "save_s": save_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "size_bytes": (out / IR_BIN).stat().st_size,
    }


def _properties(compiled, names: tuple[str, ...]) -> dict[str, str]:
    """Some properties of a compiled model as text (element types as ``f32``, ``bf16`` ...)."""
    out = {}
    for name in names:
        value = compiled.get_property(name)
        out[name] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return out


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Perplexity and top-1 agreement with the reference of one IR."""
    import openvino as ov

    from . import metrics

    tokens = np.load(args.tokens)
    compiled = ov.Core().compile_model(Path(args.ir) / IR_XML, "CPU", metrics.ACCURACY_PROPERTIES)
    quality = metrics.evaluate_quality(compiled, tokens, args.window)
    result: dict[str, Any] = {
        "perplexity": quality.perplexity,
        "nll_sum": quality.nll_sum,
        "n_predicted": quality.n_predicted,
        "size_bytes": (Path(args.ir) / IR_BIN).stat().st_size,
    }
    if args.save_argmax:
        np.save(args.save_argmax, quality.argmax)
    if args.reference_argmax:
        reference = np.load(args.reference_argmax)
        result["top1_agreement"] = float((quality.argmax == reference).mean())
    result["eval_peak_rss_bytes"] = peak_rss_bytes()
    return result


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy generation speed of one or more IRs, timed in alternation (see ``metrics.interleaved_speed``)."""
    import openvino as ov

    from . import metrics

    if len(args.label) != len(args.ir):
        raise ValueError("give one --label per --ir")
    core = ov.Core()
    compiled = {label: core.compile_model(Path(ir) / IR_XML, "CPU") for label, ir in zip(args.label, args.ir)}
    prompt = np.load(args.tokens)[: args.prompt_tokens]
    return {
        "models": metrics.interleaved_speed(compiled, prompt, args.new_tokens, args.repeats),
        "properties": _properties(
            next(iter(compiled.values())), ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "INFERENCE_NUM_THREADS")
        ),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="compress one IR with one engine")
    c.add_argument("--engine", choices=("ours", "nncf"), required=True)
    c.add_argument("--config", choices=sorted(CONFIGS), required=True)
    c.add_argument("--float-ir", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--calib-tokens", help=".npy of calibration token ids (data-aware configs)")
    c.add_argument("--result", required=True)
    e = sub.add_parser("evaluate", help="perplexity and top-1 agreement of one IR")
    e.add_argument("--ir", required=True)
    e.add_argument("--tokens", required=True, help=".npy of evaluation token ids")
    e.add_argument("--window", type=int, default=512)
    e.add_argument("--reference-argmax", help=".npy of the float model's argmax, for top-1 agreement")
    e.add_argument("--save-argmax", help="write this IR's argmax here (.npy)")
    e.add_argument("--result", required=True)
    g = sub.add_parser("speed", help="greedy generation speed of one or more IRs, timed in alternation")
    g.add_argument("--ir", action="append", required=True)
    g.add_argument("--label", action="append", required=True, help="a name per --ir, keys of the result")
    g.add_argument("--tokens", required=True, help=".npy of token ids; the prompt is their beginning")
    g.add_argument("--prompt-tokens", type=int, default=32)
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--result", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result = {"compress": compress, "evaluate": evaluate, "speed": speed}[args.command](args)
        status = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a failed row
        traceback.print_exc()
        result, status = {"error": f"{type(exc).__name__}: {exc}"}, 1
    Path(args.result).write_text(json.dumps(result, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
