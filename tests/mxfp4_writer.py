"""Test helper: a tiny gpt-oss checkpoint whose MoE experts are stored in MXFP4, as OpenAI publishes gpt-oss.

Layout, after transformers' ``integrations/mxfp4.py`` (``Mxfp4GptOssExperts``,
``convert_moe_packed_tensors``) and the gpt-oss checkpoints: for each expert
tensor ``P`` of the model (``gate_up_proj [E, H, 2I]``, ``down_proj [E, I, H]``,
``[experts, in, out]``), the checkpoint holds ``P_blocks`` uint8
``[E, out, in / 32, 16]`` (E2M1 codes of ``P[e].T``, two per byte, element
``2 k`` in the LOW nibble) and ``P_scales`` uint8 ``[E, out, in / 32]`` (E8M0:
``2^(s - 127)``); ``quantization_config = {"quant_method": "mxfp4", ...}``.

The codes are made here by round to nearest even on the OCP MX grid (shared
exponent ``floor(log2(amax)) - 2``, OCP Microscaling Formats v1.0, 6.3); no
tool is needed for that, and the reference is transformers' own
``convert_moe_packed_tensors``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)
NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


def build_float(path: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A tiny random gpt-oss (2 layers, 4 experts, top 2; hidden = intermediate = 64) saved in bfloat16."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                          num_experts_per_tok=2, sliding_window=8, max_position_embeddings=256,
                          layer_types=["sliding_attention", "full_attention"],
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(seed)
    model = GptOssForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.05)
    model.to(torch.bfloat16).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tokenizer_from) / name, Path(path) / name)
    return Path(path)


def encode_e2m1(x: np.ndarray) -> np.ndarray:
    """E2M1 codes (sign bit 3) of ``x`` rounded to nearest, ties to even code, clamped to +-6."""
    mag = np.minimum(np.abs(x), 6.0)
    dist = np.abs(mag[..., None] - E2M1)
    code = np.argmin(dist + (np.arange(8) % 2) * 1e-7, axis=-1)  # a tie goes to the even (lower) code
    return (code | np.where(np.signbit(x), 8, 0)).astype(np.uint8)


def quantize_mxfp4(w_out_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks uint8 [..., out, in / 32, 16], scales uint8 [..., out, in / 32])`` of a float ``[..., out, in]``."""
    *lead, n_out, n_in = w_out_in.shape
    groups = w_out_in.reshape(*lead, n_out, n_in // 32, 32).astype(np.float32)
    amax = np.max(np.abs(groups), axis=-1)
    exponent = np.floor(np.log2(np.where(amax > 0, amax, 1.0))).astype(np.int32) - 2
    codes = encode_e2m1(groups / np.ldexp(np.float32(1), exponent)[..., None])
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (exponent + 127).astype(np.uint8)


def write_checkpoint(float_dir: Path, out_dir: Path) -> dict[str, np.ndarray]:
    """The MXFP4 checkpoint of ``float_dir``'s gpt-oss; returns transformers' dequantization of each expert tensor."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in Path(float_dir).iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy2(item, out_dir / item.name)
    tensors, reference = {}, {}
    for name, tensor in load_file(str(Path(float_dir) / "model.safetensors")).items():
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            tensors[name] = tensor
            continue
        w = tensor.float().numpy().transpose(0, 2, 1)  # [E, out, in]
        blocks, scales = quantize_mxfp4(w)
        blocks, scales = np.ascontiguousarray(blocks), np.ascontiguousarray(scales)
        tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
        reference[name] = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                                     dtype=torch.float32).numpy()  # [E, in, out], the model's
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": NOT_CONVERTED}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return reference
