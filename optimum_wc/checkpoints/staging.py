"""A float Transformers checkpoint made from a GPTQ/AWQ one, for the exporter (reading only: no IR here).

:func:`stage_float_checkpoint` writes the checkpoint's float parts (and,
when asked, its quantized linears dequantized); :func:`model_with_placeholders`
builds the causal LM of such a staged folder with *placeholder* weights for
the quantized linears, so their float weights are never materialised.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..layout import SAFETENSORS_INDEX
from .formats import SIDECAR, read_json
from .placeholders import placeholder_views
from .reader import PrequantizedCheckpoint

# Small staging shards keep the write buffer small (measured: 512 MiB shards left ~90 MiB more peak memory).
_STAGED_SHARD_BYTES = 64 * 2**20


def _staged_config(source: Path) -> dict:
    config = read_json(source / "config.json")
    config.pop("quantization_config", None)
    return config


def stage_side_files(ckpt: PrequantizedCheckpoint, dest: Path) -> None:
    """Copy ``ckpt``'s small files (tokenizer, generation config, ...) into ``dest``; ``config.json`` loses its
    ``quantization_config``, so the exporter sees a float model.  No weights."""
    dest.mkdir(parents=True, exist_ok=True)
    skip = {SAFETENSORS_INDEX, SIDECAR, "config.json", *(f.name for f in ckpt.files)}
    for item in sorted(ckpt.path.iterdir()):
        if item.is_file() and item.name not in skip and not item.name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            shutil.copy2(item, dest / item.name)
    (dest / "config.json").write_text(json.dumps(_staged_config(ckpt.path), indent=2, sort_keys=True))


def stage_float_checkpoint(ckpt: PrequantizedCheckpoint, dest: Path, *, shard_bytes: int = _STAGED_SHARD_BYTES,
                           dequantized_layers: bool = True) -> None:
    """Write a float Transformers checkpoint of ``ckpt`` into ``dest`` for the exporter.

    ``config.json`` loses its ``quantization_config``; every non-quantized
    tensor and file is copied; with ``dequantized_layers`` the quantized
    linears get float ``<prefix>.weight`` tensors (dequantized, in the
    checkpoint's float dtype), else they are left out (the exporter then gets
    placeholders, see :func:`model_with_placeholders`).  Either way they are
    replaced by the exact integer weights after export.  Tensors are written in
    shards of at most ``shard_bytes`` so that only one shard is in memory at a
    time.  Every quantized layer is unpacked and checked here, before the
    export starts.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    stage_side_files(ckpt, dest)

    weight_map: dict[str, str] = {}
    buffer: dict[str, Any] = {}
    state = {"bytes": 0, "total": 0, "shard": 0}

    def flush() -> None:
        if not buffer:
            return
        state["shard"] += 1
        name = f"model-{state['shard']:05d}.safetensors"
        save_file(buffer, str(dest / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in buffer})
        buffer.clear()
        state["bytes"] = 0

    def add(name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if state["bytes"] and state["bytes"] + size > shard_bytes:
            flush()
        buffer[name] = tensor.contiguous()
        state["bytes"] += size
        state["total"] += size

    quantized = ckpt.quantized_tensor_names()
    for file in ckpt.files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name not in quantized:
                    add(name, f.get_tensor(name))
    dtype = getattr(torch, ckpt.float_dtype())
    for layer in ckpt.layers:
        lw = ckpt.layer_weights(layer)  # unpacks and checks the layer
        if dequantized_layers:
            add(layer.weight_name, torch.from_numpy(lw.dequantized()).to(dtype))
        del lw
    flush()
    index = {"metadata": {"total_size": state["total"]}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))


def model_with_placeholders(staged: Path, ckpt: PrequantizedCheckpoint, trust_remote_code: bool):
    """The causal LM of ``staged`` (a :func:`stage_float_checkpoint` without dequantized layers), see above."""
    import torch
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    dtype = getattr(torch, ckpt.float_dtype())
    config = AutoConfig.from_pretrained(staged, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    state: dict[str, Any] = {}
    for file in sorted(staged.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    # Placeholders: distinct views of one buffer that costs no memory (see placeholder_views)
    shapes = [(layer.out_features, layer.in_features) for layer in ckpt.layers]
    for layer, view in zip(ckpt.layers, placeholder_views(shapes, dtype)):
        state[layer.weight_name] = view
    _missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # tied weights: tie_weights below
    del state
    model.tie_weights()
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta or unexpected:
        raise ExportError(
            f"the staged checkpoint does not fit {type(model).__name__}: "
            + (f"no tensor for {', '.join(on_meta[:3])}" if on_meta else f"unknown tensors {', '.join(unexpected[:3])}")
        )
    if (staged / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(staged)
    return model.eval()
