"""Write a random-weight bfloat16 Llama checkpoint with the shapes of a real model.

Objective: measure the memory, time and disk of exporting a large model
(``benchmarks/large_models.py``) without downloading it.  The checkpoint has
the real model's ``config.json`` (architecture, shapes, RoPE settings),
transformers' tensor names and shard layout, and weights drawn from
N(0, 0.02) in bfloat16 (norm weights 1.0).  Random weights: the figures are
for memory and time only, never for accuracy.

    python scripts/make_checkpoint.py llama-2-7b /path/to/ckpt [--layers 2] [--seed 0] [--shard-gib 4]
        [--tokenizer-from DIR] [--gptq]

``--gptq`` writes a pre-quantized checkpoint instead, as AutoGPTQ / GPTQModel
save one (``quant_method: "gptq"``, v1 layout, 4 bits, group 128, symmetric,
no act-order): every decoder linear as ``qweight`` int32 ``[in / 8, out]``
(random words: uniform 4-bit codes), ``qzeros`` int32 ``[in / 128, out / 8]``
(stored 7, i.e. zero point 8), ``scales`` float16 ``[in / 128, out]``
(uniform in [0.002, 0.006]) and ``g_idx`` int32 ``[in]``; embeddings, norms
and lm_head in float16 (as GPTQ checkpoints on the hub have them).

Tensors are generated one by one (a ``torch.Generator`` seeded from
``--seed`` and the tensor's name, so the output is deterministic) and written
shard by shard with ``safetensors.torch.save_file``: at most one shard is in
memory.  Shards are named as transformers names them (``model.safetensors``
when there is one, else ``model-0000i-of-0000K.safetensors`` and
``model.safetensors.index.json``).

No tokenizer is written unless ``--tokenizer-from DIR`` is given (its
tokenizer files are copied).  That tokenizer is not the model's own (e.g.
SmolLM2's, 49152 tokens, for a 128256- or 32000-token model): it only lets
text calibration run.  Its ids must stay below the model's vocab size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

_LLAMA3_ROPE = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}
_LLAMA3 = dict(vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
               max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128001)
_LLAMA2 = dict(vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
               max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
SHAPES = {  # the public configs of the meta-llama models
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, **_LLAMA3),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, **_LLAMA3),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, **_LLAMA2),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, **_LLAMA2),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")
STD = 0.02


GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
        "checkpoint_format": "gptq"}
_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")


def make_config(shape: str, layers: int | None, gptq: bool = False) -> dict:
    s = dict(SHAPES[shape])
    if layers is not None:
        s["num_hidden_layers"] = layers
    dtype = "float16" if gptq else "bfloat16"
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
        "head_dim": s["hidden_size"] // s["num_attention_heads"], "initializer_range": STD, "rms_norm_eps": 1e-5,
        "use_cache": True, "torch_dtype": dtype, "dtype": dtype, **s,
        **({"quantization_config": dict(GPTQ)} if gptq else {}),
    }


def tensor_plan(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in LlamaForCausalLM's state-dict order."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    plan = [("model.embed_tokens.weight", (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        plan += [(p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                 (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                 (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                 (p + "mlp.down_proj.weight", (h, i)),
                 (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    plan.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        plan.append(("lm_head.weight", (v, h)))
    return plan


def gptq_plan(plan: list[tuple[str, tuple[int, ...]]]) -> list[tuple[str, tuple[int, ...]]]:
    """The plan with every decoder linear ``W [out, in]`` replaced by its four GPTQ tensors."""
    group = GPTQ["group_size"]
    out = []
    for name, shape in plan:
        if not _LINEAR.match(name):
            out.append((name, shape))
            continue
        prefix, (n_out, n_in) = name[: -len(".weight")], shape
        out += [(f"{prefix}.qweight", (n_in // 8, n_out)), (f"{prefix}.qzeros", (n_in // group, n_out // 8)),
                (f"{prefix}.scales", (n_in // group, n_out)), (f"{prefix}.g_idx", (n_in,))]
    return out


def _nbytes(name: str, shape: tuple[int, ...]) -> int:
    return (4 if name.endswith((".qweight", ".qzeros", ".g_idx")) else 2) * torch.Size(shape).numel()


def split_shards(plan: list, max_bytes: int) -> list[list]:
    """Consecutive groups of tensors of at most ``max_bytes`` each, as transformers splits them."""
    shards, current, size = [], [], 0
    for name, shape in plan:
        nbytes = _nbytes(name, shape)
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    if current:
        shards.append(current)
    return shards


def make_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".qzeros"):
        return torch.full(shape, 0x77777777, dtype=torch.int32)
    if name.endswith(".g_idx"):
        return (torch.arange(shape[0]) // GPTQ["group_size"]).to(torch.int32)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    if name.endswith(".qweight"):
        return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, generator=gen)
    if name.endswith(".scales"):
        return torch.empty(shape, dtype=torch.float32).uniform_(0.002, 0.006, generator=gen).to(torch.float16)
    return torch.empty(shape, dtype=dtype).normal_(0.0, STD, generator=gen)


def write_checkpoint(shape: str, out: Path, layers: int | None = None, seed: int = 0, shard_gib: float = 4.0,
                     tokenizer_from: Path | None = None, gptq: bool = False) -> int:
    """Write the checkpoint into ``out`` (created; must be empty or absent); return the bytes written."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"{out} is not empty")
    cfg = make_config(shape, layers, gptq)
    dtype = torch.float16 if gptq else torch.bfloat16
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen_cfg = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "do_sample": True,
               "temperature": 0.6, "top_p": 0.9}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    plan = gptq_plan(tensor_plan(cfg)) if gptq else tensor_plan(cfg)
    shards = split_shards(plan, int(shard_gib * 2**30))
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        tensors = {name: make_tensor(name, shp, seed, dtype) for name, shp in shard}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({name: fname for name in tensors})
        del tensors
        print(f"  wrote {fname} ({(out / fname).stat().st_size / 2**30:.2f} GiB)", flush=True)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer_from is not None:
        copied = [f for f in TOKENIZER_FILES if (Path(tokenizer_from) / f).is_file()]
        if not copied:
            raise SystemExit(f"{tokenizer_from} holds none of {', '.join(TOKENIZER_FILES)}")
        for f in copied:
            shutil.copy2(Path(tokenizer_from) / f, out / f)
        print(f"  copied the tokenizer of {tokenizer_from} ({', '.join(copied)}); its vocab is not the model's "
              f"({cfg['vocab_size']} rows): random weights, for memory/time only", flush=True)
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (smoke tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gib", type=float, default=4.0, help="largest shard, GiB (default 4)")
    ap.add_argument("--tokenizer-from", type=Path, default=None,
                    help="copy tokenizer*.json / special_tokens_map.json from this folder (not the model's own)")
    ap.add_argument("--gptq", action="store_true", help="write a GPTQ 4-bit (group 128) checkpoint instead")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    written = write_checkpoint(args.shape, args.out, args.layers, args.seed, args.shard_gib, args.tokenizer_from,
                               args.gptq)
    print(f"Wrote {args.out}: {written} bytes ({written / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
