"""Memory and time of exporting an MXFP4 gpt-oss checkpoint with gpt-oss-20b's shapes, keeping its experts' codes.

    .venv/bin/python -m benchmarks.prequantized_moe [--work DIR] [--layers N] [--keep] [--experts i8|f4e2m1]
        [--generate N]

Writes a random-weight checkpoint in the published gpt-oss layout (experts as
``*_blocks`` / ``*_scales`` MXFP4, everything else bfloat16; ``config.json``
with ``quantization_config: {"quant_method": "mxfp4"}``) with the shapes of
openai/gpt-oss-20b (24 layers, 32 experts of 2880 x 2880, vocab 201088; 21B
parameters, 12.8 GiB), then runs ``optimum-wc export CKPT OUT`` in a fresh
process under the large-model sampler (peak anonymous memory and resident
memory of the process tree, wall time, extra disk).  ``--experts`` picks the
IR form of the experts (``--mxfp4-experts``); ``--generate N`` then loads
the IR in another sampled process (``optimum_wc.OVModelForCausalLM``, CPU,
f32 activations as the plugin chooses) and generates N tokens greedily after
a 32-token prompt: the run-time peak memory and the time per new token.
Random weights: memory and time only.  Prints one JSON line; the benchmark
must run alone.

No NNCF side: optimum-intel loads an MXFP4 checkpoint through transformers,
which on a CPU dequantizes the experts to bfloat16 (about 38 GiB for this
model) before anything is exported or compressed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
             num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
             num_experts_per_tok=4, sliding_window=128, max_position_embeddings=131072)


def config(layers: int) -> dict:
    from transformers import GptOssConfig

    shape = {**SHAPE, "num_hidden_layers": layers,
             "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]}
    cfg = GptOssConfig(**shape, rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                                  "beta_slow": 1.0, "rope_theta": 150000.0,
                                                  "original_max_position_embeddings": 4096})
    data = cfg.to_dict()
    data.update(architectures=["GptOssForCausalLM"], dtype="bfloat16",
                quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": [
                    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})
    return data


def tensor_plan(cfg: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of every tensor: kind "float" (bf16 N(0, 0.02)), "ones", "blocks" or "scales" (uint8)."""
    h, i, v, e = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_local_experts"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    plan = [("model.embed_tokens.weight", (v, h), "float")]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        plan += [(p + "input_layernorm.weight", (h,), "ones"), (p + "post_attention_layernorm.weight", (h,), "ones"),
                 (p + "self_attn.sinks", (cfg["num_attention_heads"],), "float")]
        for proj, shape in (("q_proj", (q, h)), ("k_proj", (kv, h)), ("v_proj", (kv, h)), ("o_proj", (h, q))):
            plan += [(p + f"self_attn.{proj}.weight", shape, "float"), (p + f"self_attn.{proj}.bias", shape[:1], "float")]
        plan += [(p + "mlp.router.weight", (e, h), "float"), (p + "mlp.router.bias", (e,), "float")]
        for proj, n_out, n_in in (("gate_up_proj", 2 * i, h), ("down_proj", h, i)):
            plan += [(p + f"mlp.experts.{proj}_blocks", (e, n_out, n_in // 32, 16), "blocks"),
                     (p + f"mlp.experts.{proj}_scales", (e, n_out, n_in // 32), "scales"),
                     (p + f"mlp.experts.{proj}_bias", (e, n_out), "float")]
    plan += [("model.norm.weight", (h,), "ones"), ("lm_head.weight", (v, h), "float")]
    return plan


def make_tensor(name: str, shape: tuple[int, ...], kind: str, seed: int):
    import hashlib

    import torch

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    if kind == "ones":
        return torch.ones(shape, dtype=torch.bfloat16)
    if kind == "blocks":
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    if kind == "scales":  # 2^-9 .. 2^-5: the range of real gpt-oss expert scales
        return torch.randint(118, 123, shape, dtype=torch.uint8, generator=gen)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)


def write_checkpoint(out: Path, layers: int, seed: int = 0, shard_gib: float = 4.0) -> int:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = config(layers)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shards, current, size = [], [], 0
    for item in tensor_plan(cfg):
        import math

        nbytes = math.prod(item[1]) * (1 if item[2] in ("blocks", "scales") else 2)
        if current and size + nbytes > shard_gib * 2**30:
            shards.append(current)
            current, size = [], 0
        current.append(item)
        size += nbytes
    shards.append(current)
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: make_tensor(n, s, kind, seed) for n, s, kind in shard}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n, _, _ in shard})
        print(f"  wrote {fname}", flush=True)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}) + "\n")
    return sum(f.stat().st_size for f in out.iterdir())


def main(argv: list[str] | None = None) -> int:
    from .large_models_sampler import run_sampled

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "moe")
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
    ap.add_argument("--experts", choices=["i8", "f4e2m1"], default=None, help="--mxfp4-experts of the export")
    ap.add_argument("--generate", type=int, default=0, metavar="N", help="then generate N tokens from the IR")
    ap.add_argument("--infer", type=Path, default=None, help=argparse.SUPPRESS)  # the sampled generation process
    args = ap.parse_args(argv)
    if args.infer is not None:
        return infer(args.infer, args.generate)
    work = args.work.resolve()
    ckpt, out = work / "ckpt-gpt-oss-20b-mxfp4", work / "out"
    if not (args.keep and (ckpt / "config.json").is_file()):
        shutil.rmtree(ckpt, ignore_errors=True)
        print(f"checkpoint: {write_checkpoint(ckpt, args.layers) / 2**30:.2f} GiB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    argv_ = [str(Path(sys.executable).parent / "optimum-wc"), "export", str(ckpt), str(out)]
    argv_ += ["--mxfp4-experts", args.experts] if args.experts else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    m = run_sampled(argv_, out, work / "export.log", cwd=ROOT, env=env)
    result = {"model": "gpt-oss-20b (shapes)", "layers": args.layers, "experts": args.experts or "default",
              **m.as_dict(), "checkpoint_gib": round(sum(f.stat().st_size for f in ckpt.iterdir()) / 2**30, 2)}
    report = out / "compression_report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        result["timings"] = data.get("timings")
        result["modes"] = sorted({r["mode"] for r in data.get("prequantized", {}).get("layers", [])})
    if args.generate and m.exit_code == 0:
        timing = work / "generate.json"
        timing.unlink(missing_ok=True)
        g = run_sampled([sys.executable, "-m", "benchmarks.prequantized_moe", "--infer", str(out),
                         "--generate", str(args.generate)], work / "none", work / "generate.log", cwd=ROOT, env=env)
        result["generate"] = {**g.as_dict(), **(json.loads(timing.read_text()) if timing.is_file() else {})}
    print(json.dumps(result), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(ckpt, ignore_errors=True)
    return 0 if m.exit_code == 0 else 1


def infer(folder: Path, tokens: int) -> int:
    """Load the IR in ``folder`` and generate ``tokens`` tokens greedily; times go to ``generate.json`` beside it."""
    import time

    import numpy as np
    import torch

    from optimum_wc import OVModelForCausalLM

    start = time.perf_counter()
    model = OVModelForCausalLM.from_pretrained(folder)
    loaded = time.perf_counter()
    ids = torch.from_numpy(np.random.default_rng(0).integers(3, 50000, size=(1, 32)))
    warm = model.generate(ids, max_new_tokens=1, do_sample=False)  # the first inference sets the kernels up
    warmed = time.perf_counter()
    first = model.generate(ids, max_new_tokens=1, do_sample=False)  # the prompt and one token
    prompt = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    done = time.perf_counter()
    (folder.parent / "generate.json").write_text(json.dumps({
        "load_s": round(loaded - start, 1), "first_inference_s": round(warmed - loaded, 1),
        "prompt_and_token_s": round(prompt - warmed, 2),
        "s_per_new_token": round((done - prompt - (prompt - warmed)) / max(tokens - 1, 1), 3),
        "new_tokens": int(out.shape[1] - ids.shape[1]),
        "deterministic": bool(torch.equal(out[:, : first.shape[1]], first) and torch.equal(first, warm))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
