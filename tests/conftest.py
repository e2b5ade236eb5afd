"""Shared fixtures: tiny random causal LMs (Llama, GPT-2) with an offline tokenizer, and their float IRs.

Everything is built locally from a config: no model hub is ever contacted.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Real English prose kept in the repo (public-domain excerpt of Emma), so tests never depend on shared/.
CALIBRATION_TEXT = Path(__file__).resolve().parent / "data" / "emma_excerpt.txt"


def _training_text() -> str:
    return CALIBRATION_TEXT.read_text(encoding="utf-8")[:100_000]


def build_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE tokenizer trained on local text (deterministic, offline)."""
    from optimum_wc.models import train_bpe_tokenizer

    return train_bpe_tokenizer(_training_text(), vocab_size)


def build_llama(path: Path, hidden: int = 64, intermediate: int = 192, tie: bool = False) -> Path:
    from optimum_wc.models import build_tiny_llama

    return build_tiny_llama(path, _training_text(), hidden=hidden, intermediate=intermediate, tie=tie)


def build_gpt2(path: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture(scope="session")
def llama96_dir(tmp_path_factory) -> Path:
    """Hidden size 96: group size 64 does not divide it (adjusts to 32), 128 does not either."""
    return build_llama(tmp_path_factory.mktemp("tiny-llama96") / "model", hidden=96, intermediate=256)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return build_gpt2(tmp_path_factory.mktemp("tiny-gpt2") / "model")


def _float_ir(model_dir: Path, out: Path) -> Path:
    from optimum_wc.export.float_ir import export_float_ir

    export_float_ir(model_dir, out)
    return out / "openvino_model.xml"


@pytest.fixture(scope="session")
def llama_ir(llama_dir, tmp_path_factory) -> Path:
    return _float_ir(llama_dir, tmp_path_factory.mktemp("llama-ir"))


@pytest.fixture(scope="session")
def llama96_ir(llama96_dir, tmp_path_factory) -> Path:
    return _float_ir(llama96_dir, tmp_path_factory.mktemp("llama96-ir"))


@pytest.fixture(scope="session")
def gpt2_ir(gpt2_dir, tmp_path_factory) -> Path:
    return _float_ir(gpt2_dir, tmp_path_factory.mktemp("gpt2-ir"))


@pytest.fixture()
def read_ir():
    import openvino as ov

    core = ov.Core()
    return lambda path: core.read_model(path)


def run_logits(model, input_ids: np.ndarray, properties: dict[str, str] | None = None) -> np.ndarray:
    """Logits of a stateful OpenVINO causal LM for one batch of token ids (fresh state, f32)."""
    from optimum_wc.calibration.runners import StatefulRunner

    return StatefulRunner(model, properties=properties).logits(input_ids)


def constant_codes(const) -> np.ndarray:
    """Unpacked integer values of a u4/i4/u8/i8 Constant, in its shape."""
    import openvino as ov

    data = np.asarray(const.get_data())
    et, shape = const.get_element_type(), tuple(const.shape)
    if et in (ov.Type.u4, ov.Type.i4):
        flat = np.stack([data & 0x0F, data >> 4], axis=1).reshape(-1)[: int(np.prod(shape))].astype(np.int64)
        if et == ov.Type.i4:
            flat = np.where(flat > 7, flat - 16, flat)
        return flat.reshape(shape)
    return data.reshape(shape).astype(np.int64)


def dequantized_logits(model_dir: Path, weights: dict, input_ids: np.ndarray, keep=None) -> np.ndarray:
    """Logits of plain torch (float32) on a pre-quantized checkpoint: its float tensors, the quantized ones replaced.

    ``weights``: the dequantized parameters by name (arrays or tensors); ``keep(name, tensor)`` picks the
    checkpoint's float tensors that are model parameters (default: every floating tensor).  The model is built
    from ``config.json`` without its ``quantization_config``; every parameter must be given (rotary buffers and a
    tied lm_head aside) and no tensor may be left over.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    keep = keep or (lambda name, tensor: tensor.is_floating_point())
    state = {k: v.float() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items() if keep(k, v)}
    state.update({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = ("lm_head.weight",) if config.tie_word_embeddings else ()
    assert not unexpected and not [m for m in missing if not m.endswith(("inv_freq", *tied))], (missing, unexpected)
    model.tie_weights()
    with torch.no_grad():
        return model(torch.from_numpy(input_ids)).logits.float().numpy()
