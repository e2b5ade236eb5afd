"""Benchmark our engine against NNCF on the same float IR, same configs, in one run.

    python -m benchmarks.run [--smoke] [--model DIR] [--eval-text F] [--calib-text F ...]
                             [--configs NAMES] [--out BENCHMARKS.md]

Steps: prepare the model and its float IR (cached under ``benchmarks/work``);
tokenise the evaluation text once; evaluate the float IR (its argmax is the
reference of top-1 agreement); then for each config and engine (NNCF, ours)
compress in a subprocess and evaluate the result in another; time the
generation speed of both compressed IRs in one subprocess, taking turns;
compare the two compressed IRs constant by constant; write the markdown report.

Extension point: data-aware configs are declared in :mod:`benchmarks.configs`;
nothing here needs to change for them beyond ``--calib-text``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import models
from .configs import CONFIGS, BenchConfig, select_configs
from .parity import compare_irs
from .report import FORMATS_SECTION, KEPT_SECTIONS, Row, render, section, with_section
from .worker import CALIB_SEQ_LEN

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = ROOT / "benchmarks" / "work"
ENGINES = ("nncf", "ours")
AUSTEN_DIRS = (ROOT.parent / "shared" / "data" / "austen", Path("/work/shared/data/austen"))
EVAL_FILE = "prideprejudice.txt"

logger = logging.getLogger("benchmarks")
_START = time.perf_counter()


def say(message: str) -> None:
    """A progress line on stderr, with the seconds since start."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- inputs --------------------------------------------------------------------


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (reports stay machine-neutral)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def default_eval_text() -> Path | None:
    """The shared evaluation text (Austen's Pride and Prejudice), or None when it is not there."""
    for folder in AUSTEN_DIRS:
        if (folder / EVAL_FILE).is_file():
            return folder / EVAL_FILE
    return None


def default_calib_texts(eval_text: Path) -> list[Path]:
    """The other Austen novels beside the evaluation text (never the evaluation text itself)."""
    return sorted(p for p in eval_text.parent.glob("*.txt") if p.resolve() != eval_text.resolve())


def write_tokens(float_ir: Path, run_dir: Path, eval_text: Path, n_tokens: int,
                 calib_texts: Sequence[Path], n_calib_tokens: int) -> tuple[Path, Path | None]:
    """Tokenise once, for every row: evaluation ids (and calibration ids if needed) as .npy files."""
    from transformers import AutoTokenizer

    from optimum_wc.evaluation import tokenize_prefix

    tokenizer = AutoTokenizer.from_pretrained(float_ir)
    tokens = tokenize_prefix(tokenizer, eval_text.read_text(encoding="utf-8"), n_tokens)
    if len(tokens) < n_tokens:
        logger.warning("%s gives only %d tokens (asked for %d).", eval_text, len(tokens), n_tokens)
    eval_file = run_dir / "eval_tokens.npy"
    np.save(eval_file, tokens)
    if not calib_texts:
        return eval_file, None
    per_file = -(-n_calib_tokens // len(calib_texts))
    calib = np.concatenate([tokenize_prefix(tokenizer, p.read_text(encoding="utf-8"), per_file) for p in calib_texts])
    calib_file = run_dir / "calib_tokens.npy"
    np.save(calib_file, calib[:n_calib_tokens])
    return eval_file, calib_file


# -- subprocesses ------------------------------------------------------------


def run_worker(args: list[str], result: Path, log: Path) -> dict[str, Any]:
    """Run ``python -m benchmarks.worker ARGS`` (output to ``log``) and return its JSON result."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", *args, "--result", str(result)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    if result.is_file():
        data = json.loads(result.read_text())
        if proc.returncode == 0 or "error" in data:
            return data
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return {"error": f"worker exited with status {proc.returncode}: {tail[0]} (log: {log})"}


def compress_runs(engine: str, config: BenchConfig, float_ir: Path, out: Path, run_dir: Path,
                  calib_file: Path | None, repeats: int) -> dict[str, Any]:
    """Compress ``repeats`` times (each in a fresh process); median seconds and RSS."""
    results = []
    for i in range(repeats):
        args = ["compress", "--engine", engine, "--config", config.name, "--float-ir", str(float_ir), "--out", str(out)]
        if calib_file is not None:
            args += ["--calib-tokens", str(calib_file)]
        stem = f"{config.name}.{engine}.compress{i}"
        result = run_worker(args, run_dir / f"{stem}.json", run_dir / "logs" / f"{stem}.log")
        if "error" in result:
            return result
        results.append(result)
    merged = dict(results[-1])
    merged["compress_s"] = statistics.median(r["compress_s"] for r in results)
    merged["peak_rss_bytes"] = int(statistics.median(r["peak_rss_bytes"] for r in results))
    merged["runs"] = results
    return merged


def evaluate_ir(ir: Path, stem: str, run_dir: Path, eval_file: Path, args: argparse.Namespace,
                reference: Path | None = None, save_argmax: Path | None = None) -> dict[str, Any]:
    """Perplexity and top-1 agreement of one IR, in a subprocess."""
    cmd = ["evaluate", "--ir", str(ir), "--tokens", str(eval_file), "--window", str(args.window)]
    if reference is not None:
        cmd += ["--reference-argmax", str(reference)]
    if save_argmax is not None:
        cmd += ["--save-argmax", str(save_argmax)]
    return run_worker(cmd, run_dir / f"{stem}.eval.json", run_dir / "logs" / f"{stem}.eval.log")


def measure_speed(irs: dict[str, Path], stem: str, run_dir: Path, eval_file: Path,
                  args: argparse.Namespace) -> dict[str, Any]:
    """Generation speed of the IRs (label -> folder), timed in alternation in one subprocess."""
    cmd = ["speed", "--tokens", str(eval_file), "--prompt-tokens", str(args.prompt_tokens),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.speed_repeats)]
    for label, ir in irs.items():
        cmd += ["--ir", str(ir), "--label", label]
    return run_worker(cmd, run_dir / f"{stem}.speed.json", run_dir / "logs" / f"{stem}.speed.log")


def make_row(config: str, engine: str, compressed: dict[str, Any], evaluated: dict[str, Any],
             speed: dict[str, Any]) -> Row:
    """A table row from the worker results (the first error found, if any, marks the row)."""
    error = compressed.get("error") or evaluated.get("error") or speed.get("error")
    return Row(
        config=config,
        engine=engine,
        compress_s=compressed.get("compress_s"),
        peak_rss_bytes=compressed.get("peak_rss_bytes"),
        size_bytes=evaluated.get("size_bytes", compressed.get("size_bytes")),
        perplexity=evaluated.get("perplexity"),
        top1_agreement=evaluated.get("top1_agreement", 1.0 if engine == "float" else None),
        tokens_per_s=speed.get("models", {}).get(engine, {}).get("tokens_per_s"),
        error=error,
    )


# -- the run -------------------------------------------------------------------


def bench_float(float_ir: Path, run_dir: Path, eval_file: Path, reference: Path,
                args: argparse.Namespace) -> tuple[Row, dict[str, Any]]:
    """The reference row: the float IR evaluated (saving its argmax) and timed alone."""
    evaluated = evaluate_ir(float_ir, "float", run_dir, eval_file, args, save_argmax=reference)
    if "error" in evaluated:
        raise SystemExit(f"evaluating the float IR failed: {evaluated['error']}")
    speed = measure_speed({"float": float_ir}, "float", run_dir, eval_file, args)
    row = make_row("float", "float", {}, evaluated, speed)
    say(f"float: ppl {row.perplexity:.3f}, {row.tokens_per_s or 0:.1f} tok/s")
    return row, {"evaluate": evaluated, "speed": speed}


def bench_config(config: BenchConfig, float_ir: Path, run_dir: Path, eval_file: Path, calib_file: Path | None,
                 reference: Path, args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Both engines on one config: compress and evaluate each, time both together, compare their constants."""
    raw: dict[str, Any] = {}
    irs: dict[str, Path] = {}
    for engine in ENGINES:
        out = run_dir / "irs" / config.name / engine
        compressed = compress_runs(engine, config, float_ir, out, run_dir, calib_file, args.repeats)
        evaluated = {} if "error" in compressed else evaluate_ir(out, f"{config.name}.{engine}", run_dir, eval_file,
                                                                  args, reference)
        raw[engine] = {"compress": compressed, "evaluate": evaluated}
        if "error" not in compressed and "error" not in evaluated:
            irs[engine] = out
    speed = measure_speed(irs, config.name, run_dir, eval_file, args) if irs else {}
    raw["speed"] = speed
    rows = [make_row(config.name, e, raw[e]["compress"], raw[e]["evaluate"], speed) for e in ENGINES]
    for row in rows:
        say(f"{config.name} / {row.engine}: " + (f"ERROR {row.error}" if row.error else
            f"{row.compress_s:.3g} s, {row.peak_rss_bytes / 2**20:.0f} MiB RSS, ppl {row.perplexity:.3f}, "
            f"{row.tokens_per_s:.1f} tok/s"))
    if len(irs) == 2:
        parity = compare_irs(irs["nncf"] / models.IR_XML, irs["ours"] / models.IR_XML)
        raw["parity"] = parity.to_dict()
        rows[ENGINES.index("ours")].parity = parity.summary()
        say(f"{config.name}: identical to NNCF {parity.summary()}")
    if not args.keep_irs:
        shutil.rmtree(run_dir / "irs" / config.name, ignore_errors=True)
    return rows, raw


def settings_text(args: argparse.Namespace, eval_text: Path, n_tokens: int, props: dict[str, str]) -> dict[str, str]:
    """The measurement settings, for the report's header."""
    return {
        "Perplexity and top-1 agreement": (
            f"first {n_tokens} tokens of `{eval_text.name}` (no BOS), {n_tokens // args.window} non-overlapping "
            f"windows of {args.window}, fresh state per window, OpenVINO CPU with f32 activations and KV cache; "
            "agreement = share of positions whose argmax equals the float model's"
        ),
        "Generation speed": (
            f"greedy, {args.new_tokens} new tokens after a {args.prompt_tokens}-token prompt (prefill included), "
            f"median of {args.speed_repeats} runs; the NNCF and ours IRs of a config are timed in one process, "
            f"taking turns; OpenVINO CPU defaults (inference precision "
            f"{props.get('INFERENCE_PRECISION_HINT', '?')}, KV cache {props.get('KV_CACHE_PRECISION', '?')}, "
            f"{props.get('INFERENCE_NUM_THREADS', '?')} threads)"
        ),
        "Compression runs per row": f"{args.repeats} (median time and RSS), each in a fresh process",
    }


# Notes on the weight-format configs (issue 13): (configs they concern, text).
FORMAT_NOTES = (
    (("fp4_g64", "fp8_e4m3_g64"),
     "fp4 and fp8_e4m3 run at group size 64: at 128 NNCF fails on SmolLM2 (\"Channel size 576 should be divisible "
     "by size of group 128\": its FP8 backup of the embedding takes the primary group size, with no fallback); "
     "ours exports them (the backup adjusted to 64 where 128 does not divide)."),
    (("mxfp4", "mxfp8_e4m3", "nvfp4"),
     "MX and NVFP4 run at their only group sizes (32, 16). Where MX layers differ from NNCF's, it is the E8M0 "
     "exponent of a scale that is an exact power of two: NNCF's compiled path takes ceil(log(s) / log(2)) with the "
     "CPU plugin's approximate log, which rounds some of them up (2^-13, 2^-15, ...); ours is the exact ceil(log2 s)."),
    (("codebook_e2m1_g128",), "codebook_e2m1_g128: mode codebook with the 15 E2M1 values as its table."),
    (("adaptive_codebook",),
     "adaptive_codebook: both engines get the calibration data; NNCF's estimator (k-means over a histogram, "
     "candidates scored on the layer outputs) and ours (weighted Lloyd-Max with signed group scales, the best of a "
     "few fits on the layer-output error; README \"Weight formats\") differ by design, so no layer is identical. "
     "Both store one 16-byte E4M3 table per layer, and OpenVINO's serializer writes equal constants once: the size "
     "difference (16 bytes per table) is how many layers' tables happen to coincide (ours: 173 distinct tables of "
     "210 in a separate check, 4 of them CB4's start table), not a difference of format."),
)


def notes_text(args: argparse.Namespace, configs: Sequence[BenchConfig] = ()) -> list[str]:
    """Caveats printed under the tables."""
    notes = [
        "Speed and time figures come from a shared 2-core machine and vary by several percent between runs; "
        "a speed or time miss close to its target may be noise (use --repeats and --speed-repeats to tighten).",
        "Where every layer is identical to NNCF's (last column, scales included), both rows run the same "
        "weights: any perplexity or speed difference between them is measurement noise.",
    ]
    if any("awq" in c.data_aware for c in configs):
        notes.append("AWQ (ours): a smoothing scale no producer op can absorb (o_proj's input, the attention output "
                     "after a reshape) is inserted as a Multiply on the activation, as issue 5 prescribes; those "
                     "small f16 constants are the size difference of AWQ rows (NNCF skips AWQ for such layers).")
    if any(c.needs_data for c in configs):
        notes.append("Statistics passes of both engines run at the CPU plugin's default inference precision "
                     "(bf16 on this CPU); ours reduce the MatMul inputs inside the graph.")
    notes += [note for names, note in FORMAT_NOTES if any(c.name in names for c in configs)]
    if args.smoke:
        notes.insert(0, "Smoke run: a tiny random Llama (hidden 64, 2 layers); its figures only show the "
                        "benchmark works, they say nothing about either engine.")
    elif args.model is None:
        notes.insert(0, "SmolLM2-135M-Instruct's weights come from a GGUF Q4_1 file (4-bit asymmetric, blocks of 32), "
                        "so INT4_ASYM with group size 32 matches its blocks (not losslessly: a block's float minimum is "
                        "not an integer zero point; round to nearest gives 29.9 there, not the float 24.2); group "
                        "sizes 64/128 and INT4_SYM do not line up with its grid at all.")
        notes.insert(1, "SmolLM2's hidden size 576 is not a multiple of 128: with the ADJUST group-size fallback "
                        "(both engines) the layers that read the hidden state (q/k/v/o, gate, up) use group size 64 "
                        "in the g128 configs; only down_proj (1536 inputs) keeps 128.")
    return notes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny random Llama: the whole run takes about a minute")
    p.add_argument("--model", type=Path, help="a Transformers checkpoint folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--eval-text", type=Path, help=f"evaluation text (default: shared Austen {EVAL_FILE})")
    p.add_argument("--calib-text", type=Path, nargs="+",
                   help="calibration texts for data-aware configs (default: the other Austen novels); 'auto': "
                        "text the float model generates itself, the same for both engines")
    p.add_argument("--configs", help=f"comma-separated config names, or 'all' (known: {', '.join(CONFIGS)})")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown report (default: BENCHMARKS.md)")
    p.add_argument("--section", help="write the report as the section '## SECTION' of --out, keeping the rest "
                                      f"(e.g. {FORMATS_SECTION[3:]!r}); default: the whole file, keeping its kept sections")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache and run folder (default: benchmarks/work)")
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--speed-repeats", type=int, default=3, help="timed generations per IR, the IRs of a config taking turns (median)")
    p.add_argument("--repeats", type=int, default=1, help="compressions per config and engine (median)")
    p.add_argument("--keep-irs", action="store_true", help="keep the compressed IRs in the run folder")
    args = p.parse_args(argv)
    if args.smoke and args.model is not None:
        p.error("--smoke and --model exclude each other")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configs = select_configs(args.configs)
    eval_text = args.eval_text or default_eval_text()
    if eval_text is None or not Path(eval_text).is_file():
        raise SystemExit(f"evaluation text {eval_text or EVAL_FILE!r} not found; pass --eval-text FILE")
    eval_text = Path(eval_text)
    calib_texts = []
    self_generated = [str(t) for t in args.calib_text or []] == ["auto"]
    if any(c.needs_data for c in configs) and not self_generated:
        calib_texts = list(args.calib_text or default_calib_texts(eval_text))
        if not calib_texts:
            raise SystemExit("the data-aware configs need calibration text; pass --calib-text FILE ...")

    load_at_start = os.getloadavg()[0]
    work_dir = args.work_dir.resolve()
    name, checkpoint, float_ir = models.prepare_model(work_dir, args.smoke, args.model, eval_text)
    say(f"model {name}: float IR {float_ir}")
    run_dir = work_dir / name / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "logs").mkdir(parents=True)
    n_calib = max((c.subset_size for c in configs if c.needs_data), default=0) * CALIB_SEQ_LEN
    eval_file, calib_file = write_tokens(float_ir, run_dir, eval_text, args.eval_tokens, calib_texts, n_calib)
    generation_s = None
    if self_generated and n_calib:  # both engines get the float model's own text (benchmarks.self_generated)
        from .self_generated import write_self_generated_tokens

        calib_file, generation_s = write_self_generated_tokens(float_ir, run_dir, n_calib // CALIB_SEQ_LEN,
                                                               CALIB_SEQ_LEN)
    n_tokens = len(np.load(eval_file))

    reference = run_dir / "float_argmax.npy"
    float_row, float_raw = bench_float(float_ir, run_dir, eval_file, reference, args)
    rows = [float_row]
    raw: dict[str, Any] = {"float": float_raw}
    for config in configs:
        config_rows, raw[config.name] = bench_config(config, float_ir, run_dir, eval_file, calib_file, reference, args)
        rows += config_rows

    model_text = f"{name} (float IR {(float_ir / models.IR_BIN).stat().st_size / 2**20:.1f} MiB, from `{shown_path(checkpoint)}`)"
    markdown = render(
        command=shlex.join(["python", "-m", "benchmarks.run", *argv]),
        model=model_text,
        configs=configs,
        rows=rows,
        settings={
            **settings_text(args, eval_text, n_tokens, float_raw["speed"].get("properties", {})),
            **({} if generation_s is None else {"Calibration data": (
                f"none from the user: {n_calib // CALIB_SEQ_LEN} samples of {CALIB_SEQ_LEN} tokens the float model "
                f"generated itself (optimum-wc's dataset='auto' sampler, seed 0), given to both engines; generating "
                f"them took {generation_s:.1f} s, not counted in either engine's compression time")}),
            "Machine load": f"1-minute load average {load_at_start:.1f} at the start of the run, "
                            f"{os.getloadavg()[0]:.1f} at the end (above the core count, other processes "
                            "competed for the CPU and speed/time figures are less reliable)",
        },
        notes=notes_text(args, configs),
    )
    old = args.out.read_text() if args.out.is_file() else ""
    if args.section:
        heading = f"## {args.section}"
        body = "\n".join(["" if line.startswith("# ") else ("#" + line if line.startswith("## ") else line)
                          for line in markdown.split("\n")])
        markdown = with_section(old, heading, heading + "\n" + body.lstrip("\n"))
    else:
        for heading in KEPT_SECTIONS:  # sections written by other runs (large models, formats): keep them
            kept = section(old, heading)
            if kept is not None:
                markdown = with_section(markdown, heading, kept)
    args.out.write_text(markdown)
    (run_dir / "results.json").write_text(json.dumps(raw, indent=2, default=str))
    say(f"wrote {args.out} (raw results: {run_dir / 'results.json'})")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
