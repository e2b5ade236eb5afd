"""Test helper: write tiny GPTQ / AWQ checkpoints holding known integer codes (no GPTQ library, no GPU).

:func:`write_checkpoint` takes a float Transformers checkpoint (the tiny Llama
of ``conftest.py``) and replaces every decoder linear weight by packed
tensors built from *planted* codes, zero points, scales and ``g_idx``:

* GPTQ ``qweight`` int32 ``[in * bits / 32, out]`` (packed along the input
  axis, low bits first), ``qzeros`` int32 ``[groups, out * bits / 32]``
  (along the output axis; v1 stores ``zero - 1``), ``scales`` f16
  ``[groups, out]``, ``g_idx`` int32 ``[in]``;
* AWQ GEMM ``qweight`` int32 ``[in, out / 8]`` and ``qzeros`` ``[groups, out / 8]``
  packed along the output axis in AWQ's order ``[0, 2, 4, 6, 1, 3, 5, 7]``.

The packers are written loop by loop after AutoGPTQ's and AutoAWQ's ``pack``
methods, independently of the unpackers under test.  :func:`reference_logits`
runs plain torch on the same checkpoint with the planted weights dequantized.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LINEAR = re.compile(r"^(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)\.weight$")
AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


@dataclass
class Planted:
    """The integers behind one quantized linear ``W [out, in]``."""

    codes: np.ndarray  # int64 [out, in], values in [0, 2^bits)
    zeros: np.ndarray  # int64 [groups, out], the real zero points
    scales: np.ndarray  # float16 [groups, out]
    g_idx: np.ndarray  # int64 [in], group of each input channel
    bias: np.ndarray | None = None
    bits: int = 0  # the layer's bits (0: the checkpoint's)

    def dequantized(self) -> np.ndarray:
        """``scales[g(i), o] * (codes[o, i] - zeros[g(i), o])`` in float32 (exact: few-bit integer times f16)."""
        g = self.g_idx
        levels = (self.codes - self.zeros[g].T).astype(np.float32)
        return (levels * self.scales[g].T.astype(np.float32)).astype(np.float32)

    def dequantized_f16(self) -> np.ndarray:
        """The same computed as the GPTQ kernels do, in float16."""
        g = self.g_idx
        return (self.codes - self.zeros[g].T).astype(np.float16) * self.scales[g].T


def pack_gptq_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """uint [n, m] -> int32 [n * bits / 32, m]: value row ``r * p + k`` at bits ``[bits k, bits k + bits)`` of row r."""
    if bits == 3:
        return pack_gptq_3bit_rows(values)
    per = 32 // bits
    v = values.astype(np.uint32)
    out = np.zeros((v.shape[0] // per, v.shape[1]), dtype=np.uint32)
    for row in range(out.shape[0]):
        for k in range(per):
            out[row] |= v[row * per + k] << np.uint32(bits * k)
    return out.view(np.int32)


def pack_gptq_3bit_rows(values: np.ndarray) -> np.ndarray:
    """uint3 [n, m] -> int32 [3 n / 32, m], written after the loop of AutoGPTQ's / AutoRound's ``pack`` for 3 bits
    (``auto_round_extension/torch/qlinear_torch_zp.py``, ``pack_3bits``): 32 values per 3 words, values 10 and 21
    split across two words."""
    v = values.astype(np.uint32)
    out = np.zeros((v.shape[0] // 32 * 3, v.shape[1]), dtype=np.uint32)
    i, row = 0, 0
    while row < out.shape[0]:
        for j in range(10):
            out[row] |= v[i + j] << np.uint32(3 * j)
        i += 10
        out[row] |= v[i] << np.uint32(30)
        row += 1
        out[row] |= (v[i] >> np.uint32(2)) & np.uint32(1)
        i += 1
        for j in range(10):
            out[row] |= v[i + j] << np.uint32(3 * j + 1)
        i += 10
        out[row] |= v[i] << np.uint32(31)
        row += 1
        out[row] |= (v[i] >> np.uint32(1)) & np.uint32(3)
        i += 1
        for j in range(10):
            out[row] |= v[i + j] << np.uint32(3 * j + 2)
        i += 10
        row += 1
    return out.view(np.int32)


def pack_gptq_columns(values: np.ndarray, bits: int) -> np.ndarray:
    """uint [n, m] -> int32 [n, m * bits / 32]: column ``c * p + k`` at bits ``[bits k, bits k + bits)`` of column c."""
    if bits == 3:  # the rows' loop along the columns (AutoGPTQ packs qzeros the same way)
        return np.ascontiguousarray(pack_gptq_3bit_rows(values.T).T)
    per = 32 // bits
    v = values.astype(np.uint32)
    out = np.zeros((v.shape[0], v.shape[1] // per), dtype=np.uint32)
    for col in range(out.shape[1]):
        for k in range(per):
            out[:, col] |= v[:, col * per + k] << np.uint32(bits * k)
    return out.view(np.int32)


def pack_awq(values: np.ndarray) -> np.ndarray:
    """uint4 [n, m] -> int32 [n, m / 8] as AutoAWQ's WQLinear_GEMM: nibble i of column c holds column 8c + order[i]."""
    v = values.astype(np.uint32)
    out = np.zeros((v.shape[0], v.shape[1] // 8), dtype=np.uint32)
    for col in range(out.shape[1]):
        for i in range(8):
            out[:, col] |= v[:, col * 8 + AWQ_PACK_ORDER[i]] << np.uint32(4 * i)
    return out.view(np.int32)


def _load_tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _save_tensors(tensors: dict, out_dir: Path, shards: int) -> None:
    from safetensors.torch import save_file

    for old in out_dir.glob("*.safetensors"):
        old.unlink()
    (out_dir / "model.safetensors.index.json").unlink(missing_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file({n: tensors[n].contiguous() for n in names}, str(out_dir / "model.safetensors"),
                  metadata={"format": "pt"})
        return
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({n: tensors[n].contiguous() for n in part}, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index))


def write_checkpoint(
    float_dir: Path,
    out_dir: Path,
    *,
    method: str = "gptq",
    bits: int = 4,
    group_size: int = 32,
    sym: bool = False,
    desc_act: bool = False,
    checkpoint_format: str = "gptq",
    config_file: str = "config.json",
    shards: int = 1,
    dtype: str | None = None,
    seed: int = 0,
    dynamic: dict | None = None,
    quant_config: dict | None = None,
    awq_version: str = "gemm",
) -> dict[str, Planted]:
    """Write a GPTQ/AWQ checkpoint of ``float_dir``'s model into ``out_dir``; return the planted layers by prefix.

    ``config_file``: where the quantization settings go (``config.json``'s
    ``quantization_config`` or a ``quantize_config.json``).  ``dtype`` casts the
    float tensors (and sets the config's dtype).  ``dynamic``: GPTQModel's
    per-module rules (``"-:regex"`` keeps a layer float, ``"+:regex"`` or a
    bare regex sets its ``bits`` / ``group_size``; the first match wins).
    ``quant_config`` replaces the written quantization config (AutoRound's, say).
    """
    import torch

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in Path(float_dir).iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != "model.safetensors.index.json":
            shutil.copy2(item, out_dir / item.name)
    tensors = _load_tensors(Path(float_dir))
    torch_dtype = getattr(torch, dtype) if dtype else None
    planted: dict[str, Planted] = {}
    result = {}
    for name, tensor in tensors.items():
        match = LINEAR.match(name)
        if not match:
            result[name] = tensor.to(torch_dtype) if torch_dtype is not None and tensor.is_floating_point() else tensor
            continue
        prefix = match.group(1)
        rule = next((r for r in (dynamic or {}) if re.match(r[2:] if r[:2] in ("-:", "+:") else r, prefix)), None)
        if rule is not None and rule.startswith("-:"):
            result[name] = tensor.to(torch_dtype) if torch_dtype is not None else tensor
            continue
        layer = {"bits": bits, "group_size": group_size, **({} if rule is None else dynamic[rule])}
        bits_l, group_l = layer["bits"], layer["group_size"]
        w = tensor.float().numpy()
        n_out, n_in = w.shape
        gs = n_in if group_l == -1 else group_l
        n_groups = -(-n_in // gs)  # GPTQ tools: ceil(in / g) groups, the last one partial when g does not divide
        high = 2**bits_l - 1
        codes = rng.integers(0, high + 1, size=(n_out, n_in))
        if sym:
            zeros = np.full((n_groups, n_out), 2 ** (bits_l - 1), dtype=np.int64)
        else:  # v1 cannot store a zero point of 0 (it stores zero - 1)
            zeros = rng.integers(1 if checkpoint_format == "gptq" else 0, high + 1, size=(n_groups, n_out))
        scales = (np.float32(w.std()) * 8 / high * rng.uniform(0.5, 1.5, size=(n_groups, n_out))).astype(np.float16)
        if desc_act and group_l != -1:
            order = rng.permutation(n_in)
            g_idx = np.empty(n_in, dtype=np.int64)
            g_idx[order] = np.arange(n_in) // gs
        else:
            g_idx = np.arange(n_in) // gs
        planted[prefix] = Planted(codes, zeros, scales, g_idx, bits=bits_l)
        if method == "awq" and awq_version == "gemv":  # AutoAWQ's WQLinear_GEMV.from_linear
            width = -(-(-(-n_groups // 8)) // {32: 4, 64: 2}.get(gs, 1)) * {32: 4, 64: 2}.get(gs, 1)
            padded_zeros = np.zeros((n_out, width * 8), dtype=np.int64)
            padded_zeros[:, :n_groups] = zeros.T
            padded_scales = np.zeros((n_out, width * 8), dtype=np.float16)
            padded_scales[:, :n_groups] = scales.T
            result[f"{prefix}.qweight"] = torch.from_numpy(pack_gptq_columns(codes, 4).copy())
            result[f"{prefix}.qzeros"] = torch.from_numpy(pack_gptq_columns(padded_zeros, 4).copy())
            result[f"{prefix}.scales"] = torch.from_numpy(padded_scales)
            continue
        if method == "awq":
            result[f"{prefix}.qweight"] = torch.from_numpy(pack_awq(codes.T).copy())
            result[f"{prefix}.qzeros"] = torch.from_numpy(pack_awq(zeros).copy())
        else:
            stored = zeros - (1 if checkpoint_format == "gptq" else 0)
            result[f"{prefix}.qweight"] = torch.from_numpy(pack_gptq_rows(codes.T, bits_l).copy())
            result[f"{prefix}.qzeros"] = torch.from_numpy(pack_gptq_columns(stored & high, bits_l).copy())
            result[f"{prefix}.g_idx"] = torch.from_numpy(g_idx.astype(np.int32))
        result[f"{prefix}.scales"] = torch.from_numpy(scales.copy())
    _save_tensors(result, out_dir, shards)

    if method == "awq":
        qc = {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": awq_version}
    else:
        qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym, "desc_act": desc_act,
              "checkpoint_format": checkpoint_format}
        if dynamic:
            qc["dynamic"] = dynamic
    if quant_config is not None:
        qc = quant_config
    config = json.loads((out_dir / "config.json").read_text())
    if dtype:
        config["dtype"] = dtype
    if config_file == "config.json":
        config["quantization_config"] = qc
    else:
        (out_dir / config_file).write_text(json.dumps(qc, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return planted


def edit_tensors(model_dir: Path, edit) -> None:
    """Rewrite the checkpoint's tensors with ``edit(dict) -> dict`` (one shard)."""
    tensors = _load_tensors(Path(model_dir))
    _save_tensors(edit(dict(tensors)), Path(model_dir), 1)


def edit_config(model_dir: Path, edit) -> None:
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2))


def reference_logits(model_dir: Path, planted: dict[str, Planted], input_ids: np.ndarray) -> np.ndarray:
    """Logits of plain torch (float32) on the checkpoint, quantized linears dequantized from the planted integers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = {n: t.float() for n, t in _load_tensors(Path(model_dir)).items()
             if not n.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    state.update({f"{prefix}.weight": torch.from_numpy(p.dequantized()) for prefix, p in planted.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert not [m for m in missing if m != "lm_head.weight" or not config.tie_word_embeddings], missing
    with torch.no_grad():
        return model(torch.from_numpy(input_ids)).logits.float().numpy()


def build_llama_with_bias(path: Path) -> Path:
    """The tiny Llama of conftest.py with biases on attention and MLP linears (as Qwen2-like GPTQ models have)."""
    import torch
    from conftest import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        attention_bias=True, mlp_bias=True, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.05)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path
