"""A float checkpoint's causal LM with placeholder weights, so the exporter never materialises them.

Objective: the traced graph of a model of any size, built with memory for its
small tensors only.  Every floating tensor of two or more dimensions that the
checkpoint holds with the parameter's shape becomes a *placeholder*: a view of
one small shared buffer (see :func:`placeholder_views`); norms, biases and
buffers are read from the checkpoint as they are.  After export, the IR's
constants named after the placeholders are bound to the checkpoint's
memory-mapped tensors (:func:`optimum_wc.ir.binding.bind_constants`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportError
from .tensors import CheckpointTensors

MIN_PLACEHOLDER_ELEMENTS = 1024  # smaller matrices are read as they are


class NotStreamable(ExportError):
    """The checkpoint cannot be exported with placeholder weights; the caller falls back to a full load."""


def torch_view(array, torch_dtype: str):
    """A CPU torch tensor copied from the NumPy view ``array`` (bfloat16 arrives as uint16)."""
    import numpy as np
    import torch

    if torch_dtype == "bfloat16":
        return torch.from_numpy(np.array(array)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def placeholder_views(shapes: list[tuple[int, ...]], dtype):
    """Distinct placeholder tensors of ``shapes``, all overlapping views of one buffer as large as the largest.

    View ``i`` starts ``i`` elements into the buffer, whose first elements are
    a ramp of period ``len(shapes) + 1``: no two views are equal (the
    exporter merges equal constants), so each stays a node of its own.  The
    rest of the buffer is zeros the program never writes: fresh pages from
    ``calloc`` that cost no memory until written (reading them maps the
    kernel's shared zero page).
    """
    import numpy as np
    import torch

    sizes = [int(torch.Size(s).numel()) for s in shapes]
    period = len(sizes) + 1
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = np.zeros((max(sizes, default=1) + len(sizes)) * itemsize, dtype=np.uint8)
    buffer = torch.from_numpy(raw).view(dtype)
    head = min(buffer.numel(), 2 * period)
    buffer[:head] = ((torch.arange(head, dtype=torch.float32) % period) * (1e-2 / period)).to(dtype)
    return [buffer[i : i + n].view(shape) for i, (n, shape) in enumerate(zip(sizes, shapes))]


def checkpoint_dtype(tensors: CheckpointTensors):
    """The floating dtype holding most of the checkpoint's bytes (what transformers' ``dtype="auto"`` picks)."""
    import torch

    by_dtype: dict[str, int] = {}
    for info in tensors.info.values():
        if info.torch_dtype in ("float32", "float16", "bfloat16", "float64"):
            by_dtype[info.torch_dtype] = by_dtype.get(info.torch_dtype, 0) + info.nbytes
    return getattr(torch, max(by_dtype, key=by_dtype.get)) if by_dtype else torch.float32


def placeholder_model(folder: Path, tensors: CheckpointTensors, dtype=None, trust_remote_code: bool = False,
                      packed: dict[str, tuple[int, ...]] | None = None) -> tuple[Any, dict[str, str | None]]:
    """The causal LM of ``folder`` with placeholder matrices; returns it and ``{parameter name: tensor name}``.

    ``packed``: parameters the checkpoint holds in another form (a GPTQ/AWQ
    layer's packed integers), by shape; they become placeholders too, mapped
    to None, for the caller to replace after export.

    Raises :class:`NotStreamable` when a parameter has no tensor of its shape
    in the checkpoint (renamed or converted on load, as transformers does for
    some architectures): such a model is exported the usual way.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if dtype in (None, "auto"):
        dtype = checkpoint_dtype(tensors)
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()
    params = dict(model.named_parameters())  # tied parameters once, under their first name
    packed = packed or {}
    swapped = transposed_experts(model, packed)
    shape_of = {**{n: tuple(info.shape) for n, info in tensors.info.items()}, **packed}
    missing = [n for n, p in params.items() if shape_of.get(n) != (_swap(p.shape) if n in swapped else tuple(p.shape))]
    if missing:
        raise NotStreamable(f"the checkpoint has no tensor of the model's shape for {', '.join(missing[:3])}")
    placeholders: dict[str, str | None] = {
        n: (None if n in packed else n) for n, p in params.items()
        if n in packed or (p.dim() >= 2 and p.is_floating_point() and p.numel() >= MIN_PLACEHOLDER_ELEMENTS
                           and not n.endswith("bias"))  # biases (MoE: [experts, out]) are folded into other constants
    }
    names = sorted(n for n in placeholders if n not in swapped)
    state = dict(zip(names, placeholder_views([tuple(packed.get(n, params[n].shape)) for n in names], dtype)))
    # the experts in float32: the exporter casts the parameters of modules it has no 16-bit extension for to float32,
    # which would write a float32 copy of every (free, all-zero) placeholder
    relaid = dict(zip(swapped, placeholder_views([tuple(packed[n]) for n in swapped], torch.float32)))
    for name, p in params.items():
        if name not in state and name not in relaid:
            info = tensors.info[name]
            tensor = torch_view(tensors.array(name), info.torch_dtype)
            state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    _missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    for name, module in swapped.items():  # the experts laid out [experts, out, in]: the MatMul reads them as they are
        setattr(module, name.rpartition(".")[2], torch.nn.Parameter(relaid[name], requires_grad=False))
        module.is_transposed = False
    model.tie_weights()
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta or unexpected:
        raise NotStreamable(f"the model's parameters {', '.join((on_meta or unexpected)[:3])} cannot be assigned")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval(), placeholders


def _swap(shape) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[1])


def transposed_experts(model, packed: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Packed MoE expert parameters to give the exporter as ``[experts, out, in]``, with the module holding each.

    transformers' experts marked ``is_transposed`` hold ``[experts, in, out]``,
    which the exporter turns into a MatMul on a transposed *copy*; laid out
    ``[experts, out, in]`` (the packed checkpoints' own order) with
    ``is_transposed`` off, the MatMul reads the named constant itself.  Both
    projections of a module must be packed in that order.
    """
    found: dict[str, Any] = {}
    for module_name, module in model.named_modules():
        if not getattr(module, "is_transposed", False):
            continue
        names = [f"{module_name}.{attr}" for attr in ("gate_up_proj", "down_proj")]
        shapes = [tuple(getattr(module, attr).shape) for attr in ("gate_up_proj", "down_proj")]
        if all(n in packed and tuple(packed[n]) == _swap(s) for n, s in zip(names, shapes)):
            found.update({n: module for n in names})
    return found
