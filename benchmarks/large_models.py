"""Memory, time and disk of exporting large models, optimum-wc beside optimum-intel + NNCF.

    .venv/bin/python -m benchmarks.large_models [--sizes 1b 3b 7b 13b] [--configs int8 int4 int4_awq_se]
        [--engines ours nncf] [--work DIR] [--tokenizer-from DIR] [--layers N] [--keep]
    .venv/bin/python -m benchmarks.large_models --table [--work DIR]

For each size, ``scripts/make_checkpoint.py`` writes a random-weight bf16
checkpoint with the real model's shapes (Llama-3.2-1B/3B, Llama-2-7B/13B;
random weights: memory and time only, never accuracy); then each config
(``int8``, ``int4`` = INT4 asym group 128, ``int4_awq_se`` = the same with AWQ
and scale estimation on 32 samples of 128 tokens of Pride and Prejudice) is
exported by each engine, one run after the other, each in a fresh process:

* ours: ``optimum-wc export CKPT OUT --weight-format ...``; its compression
  step is ``timings["compress_s"]`` of ``OUT/compression_report.json``;
* nncf: ``optimum-cli export openvino -m CKPT --weight-format ...`` (int8,
  int4) or ``OVModelForCausalLM.from_pretrained(..., quantization_config=...)``
  + ``save_pretrained`` (int4_awq_se), in a wrapper that times every call of
  ``nncf.compress_weights`` (optimum-intel calls it as ``nncf.compress_weights``,
  so patching the module attribute catches it).

How (``benchmarks/large_models_sampler.py``): every 0.1 s the command's whole
process tree is sampled: the sum of ``Pss_Anon`` (anonymous memory: heap,
arrays; it excludes the memory-mapped checkpoint and IR pages, which are
file-backed and which the kernel can drop under pressure) and of ``Pss``
(everything resident, mapped files included; proportional sets, so
the copy-on-write pages of a forked child are counted once), and the used bytes of the
output's file system above their value at the start (temporary folders
included: /tmp is the same file system here).  Also the wall time, the exit
code and the size of the output folder.  Before each run ``os.sync()``
runs and, when the benchmark runs as root, the page cache is dropped, so
every run reads the checkpoint from the disk.  Runs are sequential, in
fresh processes; the benchmark must run ALONE on the machine (other
processes skew the timings on 2 cores and the disk figure counts every
writer on the file system).  Each output is deleted right after it is
measured and each checkpoint after its size, so the disk holds one
checkpoint and one output at a time.

Results are appended as JSON lines to ``WORK/results.jsonl``; ``--table``
prints them as a Markdown table (the latest result of each run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .large_models_sampler import run_sampled

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"1b": "llama-3.2-1b", "3b": "llama-3.2-3b", "7b": "llama-2-7b", "13b": "llama-2-13b"}
MODEL_NAMES = {"1b": "Llama-3.2-1B", "3b": "Llama-3.2-3B", "7b": "Llama-2-7B", "13b": "Llama-2-13B"}
FULL_LAYERS = {"1b": 16, "3b": 28, "7b": 32, "13b": 40}
CONFIGS = ("int8", "int4", "int4_awq_se", "gptq")
DEFAULT_CONFIGS = CONFIGS[:3]  # gptq (a pre-quantized checkpoint of its own) only when asked for
DATA_AWARE_SIZES = ("1b", "3b")  # int4_awq_se by default only there
ENGINES = ("ours", "nncf")
DATA_FILE = Path("/work/shared/data/austen/prideprejudice.txt")
NUM_SAMPLES, SAMPLE_LENGTH = 32, 128
PACKAGES = ("openvino", "nncf", "optimum-intel", "optimum", "transformers", "torch")
WRAPPER_LABEL = "<benchmarks.large_models.NNCF_WRAPPER>"

# Runs optimum-intel with nncf.compress_weights timed: python -c NNCF_WRAPPER CONFIG CKPT OUT [DATA N L]
NNCF_WRAPPER = r'''
import atexit, re, sys, time
import nncf
_compress_weights, _total = nncf.compress_weights, [0.0, 0]
def _timed(*args, **kwargs):
    start = time.perf_counter()
    try:
        return _compress_weights(*args, **kwargs)
    finally:
        _total[0] += time.perf_counter() - start
        _total[1] += 1
nncf.compress_weights = _timed  # optimum-intel looks it up as nncf.compress_weights at call time
atexit.register(lambda: print(f"NNCF_COMPRESS_S {_total[0]:.3f} calls={_total[1]}", flush=True))
config, ckpt, out = sys.argv[1:4]
if config in ("int8", "int4", "gptq"):  # gptq: optimum-intel's own path for a GPTQ checkpoint
    from optimum.commands.optimum_cli import main
    sys.argv = ["optimum-cli", "export", "openvino", "-m", ckpt, "--task", "text-generation-with-past",
                *(["--weight-format", config] if config != "gptq" else []), out]  # a local folder: no task inferred
    main()
else:  # int4_awq_se: texts of sample_length tokens, paragraphs merged in order
    data, n, length = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ckpt)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", open(data, encoding="utf-8").read())]
    texts, buf = [], []
    for p in filter(None, paragraphs):
        buf.append(p)
        ids = tok(" ".join(buf), add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            texts.append(tok.decode(ids[:length]))
            buf = []
        if len(texts) == n:
            break
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    qc = OVWeightQuantizationConfig(bits=4, sym=False, group_size=128, ratio=1.0, quant_method="awq",
                                    scale_estimation=True, dataset=texts, num_samples=n, tokenizer=ckpt)
    model = OVModelForCausalLM.from_pretrained(ckpt, export=True, quantization_config=qc, compile=False)
    model.save_pretrained(out)
'''


def git_commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> dict:
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu_count": os.cpu_count(), "mem_gib": round(mem_kib / 2**20, 1), "versions": versions}


def command(engine: str, config: str, ckpt: Path, out: Path) -> list[str]:
    bindir = Path(sys.executable).parent
    if engine == "ours":
        argv = [str(bindir / "optimum-wc"), "export", str(ckpt), str(out)]
        argv += ["--weight-format", config[:4]] if config != "gptq" else []  # gptq: its integers, INT8 float parts
        if config == "int4_awq_se":
            argv += ["--awq", "--scale-estimation", "--dataset", str(DATA_FILE), "--num-samples", str(NUM_SAMPLES),
                     "--sample-length", str(SAMPLE_LENGTH)]
        return argv
    argv = [sys.executable, "-c", NNCF_WRAPPER, config, str(ckpt), str(out)]
    if config == "int4_awq_se":
        argv += [str(DATA_FILE), str(NUM_SAMPLES), str(SAMPLE_LENGTH)]
    return argv


def make_checkpoint(size: str, ckpt: Path, layers: int | None, tokenizer_from: Path | None, keep: bool,
                    gptq: bool = False) -> None:
    """Write the checkpoint (to a temporary name, renamed when complete); reuse one kept by --keep."""
    if keep and (ckpt / "config.json").is_file():
        cfg = json.loads((ckpt / "config.json").read_text())
        if cfg["num_hidden_layers"] == (layers or FULL_LAYERS[size]):
            print(f"Reusing {ckpt}", flush=True)
            return
    shutil.rmtree(ckpt, ignore_errors=True)
    partial = ckpt.with_name(ckpt.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), SIZES[size], str(partial)]
    argv += ["--layers", str(layers)] if layers is not None else []
    argv += ["--tokenizer-from", str(tokenizer_from)] if tokenizer_from is not None else []
    argv += ["--gptq"] if gptq else []
    subprocess.run(argv, check=True)
    partial.rename(ckpt)


def compression_seconds(engine: str, out: Path, log: Path) -> tuple[float | None, dict]:
    """The compression step's seconds and its details (ours: the report's timings; nncf: calls)."""
    if engine == "ours":
        try:
            timings = json.loads((out / "compression_report.json").read_text()).get("timings") or {}
        except (OSError, ValueError):
            return None, {}
        return timings.get("compress_s"), {"timings": timings}
    found = re.findall(r"^NNCF_COMPRESS_S ([\d.]+) calls=(\d+)$", log.read_text(errors="replace"), re.M)
    if not found:
        return None, {}
    seconds, calls = float(found[-1][0]), int(found[-1][1])
    return (seconds if calls else None), {"nncf_compress_calls": calls}


def run_one(size: str, config: str, engine: str, ckpt: Path, work: Path, layers: int | None, info: dict) -> dict:
    out = work / f"out-{size}-{config}-{engine}"
    log = work / "logs" / f"{size}-{config}-{engine}.log"
    shutil.rmtree(out, ignore_errors=True)
    argv = command(engine, config, ckpt, out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print(f"\n== {size} {config} {engine}: {' '.join(a if a != NNCF_WRAPPER else WRAPPER_LABEL for a in argv)}",
          flush=True)
    m = run_sampled(argv, out, log, cwd=ROOT, env=env)
    compress_s, details = compression_seconds(engine, out, log)
    result = {
        "size": size, "model": MODEL_NAMES[size], "shape": SIZES[size], "layers": layers, "config": config,
        "engine": engine, **m.as_dict(), "compress_s": compress_s, **details,
        "command": [WRAPPER_LABEL if a == NNCF_WRAPPER else a for a in argv], "log": str(log),
        "git_commit": info["git_commit"], "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": info["machine"],
    }
    shutil.rmtree(out, ignore_errors=True)
    if m.exit_code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        print(f"FAILED (exit {m.exit_code}); last lines of {log}:\n" + "\n".join(tail), flush=True)
    if "timings" in details:
        print(f"ours timings: {details['timings']}")
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return result


def run(args) -> int:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = {"git_commit": git_commit(), "machine": machine()}
    failures = 0
    for size in args.sizes:
        configs = args.configs or [c for c in DEFAULT_CONFIGS if c != "int4_awq_se" or size in DATA_AWARE_SIZES]
        for gptq in (False, True):  # the float checkpoint's configs, then the GPTQ checkpoint's
            todo = [c for c in configs if (c == "gptq") == gptq]
            if not todo:
                continue
            # not the hub name: optimum-intel picks per-model defaults by folder name
            ckpt = work / (f"ckpt-{SIZES[size]}" + ("-gptq" if gptq else ""))
            make_checkpoint(size, ckpt, args.layers, args.tokenizer_from, args.keep, gptq)
            has_tokenizer = any((ckpt / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
            for config in todo:
                if config == "int4_awq_se" and not has_tokenizer:
                    print(f"Skipping {size} {config}: the checkpoint has no tokenizer (pass --tokenizer-from DIR).")
                    continue
                for engine in [e for e in ENGINES if e in args.engines]:
                    failures += run_one(size, config, engine, ckpt, work, args.layers, info)["exit_code"] != 0
            if not args.keep:
                shutil.rmtree(ckpt, ignore_errors=True)
    return 1 if failures else 0


def _fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def table(work: Path) -> str:
    path = work / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest = {}
    for r in rows:  # the latest run of each (size, layers, config, engine)
        latest[(r["size"], r.get("layers"), r["config"], r["engine"])] = r
    last = rows[-1]
    mach, versions = last["machine"], last["machine"]["versions"]
    commits = sorted({r["git_commit"] for r in latest.values()})
    dates = sorted(r["date"] for r in latest.values())
    lines = [
        f"Machine: {mach['cpu_count']} CPUs, {mach['mem_gib']} GiB RAM. "
        + "Packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Date: {dates[0]} to {dates[-1]}. Git commit: {', '.join(commits)}.",
        "Random-weight bf16 checkpoints with the real models' shapes (memory and time only); `gptq`: a random "
        "GPTQ checkpoint of the same shapes (4-bit, group 128, float16 float parts; "
        "`scripts/make_checkpoint.py --gptq`) exported keeping its integers, float parts INT8. "
        "Anon = peak anonymous memory (excludes the memory-mapped checkpoint/IR pages), RSS = peak resident, "
        "both summed over the process tree; export = wall time of the whole command; compression = "
        "ours `compress_s`, NNCF the time inside `nncf.compress_weights`; disk = extra file-system use at peak.",
        "",
    ]
    fig = ["anon GiB", "RSS GiB", "export s", "compr. s", "disk GiB", "out GiB"]
    head = ["model", "config"] + [f"ours {f}" for f in fig] + [f"NNCF {f}" for f in fig]
    head += ["compr. ours/NNCF", "export ours/NNCF", "anon ours/NNCF", "ours disk/out"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {k: i for i, k in enumerate(SIZES)}
    keys = sorted({k[:3] for k in latest}, key=lambda k: (order.get(k[0], 99), k[1] or 0, CONFIGS.index(k[2])))
    for size, layers, config in keys:
        o, n = latest.get((size, layers, config, "ours")), latest.get((size, layers, config, "nncf"))
        name = MODEL_NAMES[size] + (f" ({layers} layers)" if layers else "")
        cells = [name, config]
        for r in (o, n):
            if r is None:
                cells += ["-"] * len(fig)
            elif r["exit_code"] != 0:
                cells += [f"failed ({r['exit_code']})"] + ["-"] * (len(fig) - 1)
            else:
                cells += [_fmt(r["peak_anon_gib"]), _fmt(r["peak_rss_gib"]), _fmt(r["wall_s"], 1),
                          _fmt(r["compress_s"], 1), _fmt(r["extra_disk_gib"]), _fmt(r["output_gib"])]
        ok = o is not None and n is not None and o["exit_code"] == 0 and n["exit_code"] == 0
        for key in ("compress_s", "wall_s", "peak_anon_gib"):
            cells.append(_ratio(o[key], n[key]) if ok else "-")
        cells.append(_ratio(o["extra_disk_gib"], o["output_gib"]) if o is not None and o["exit_code"] == 0 else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=None,
                    help="default: int8 and int4 for every size, int4_awq_se for 1b and 3b; gptq: a GPTQ "
                         "checkpoint of the same shapes, exported keeping its integers")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "large")
    ap.add_argument("--tokenizer-from", type=Path, default=None,
                    help="copy this tokenizer into each checkpoint (needed by int4_awq_se; not the model's own)")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (smoke tests)")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the checkpoints")
    ap.add_argument("--table", action="store_true", help="print the Markdown table of WORK/results.jsonl")
    ap.add_argument("--write", type=Path, default=None,
                    help="with --table: put it in this file's '## Large models' section (e.g. BENCHMARKS.md)")
    args = ap.parse_args(argv)
    if args.table:
        text = table(args.work.resolve())
        print(text)
        if args.write is not None:
            from .report import LARGE_MODELS, with_section

            old = args.write.read_text() if args.write.is_file() else ""
            body = (f"{LARGE_MODELS}\n\nWritten by `python -m benchmarks.large_models` (then `--table --write "
                    f"{args.write.name}`); `python -m benchmarks.run` keeps this section.\n\n{text}\n")
            args.write.write_text(with_section(old, LARGE_MODELS, body))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
