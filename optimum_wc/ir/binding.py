"""Bind an IR traced with placeholder weights to the checkpoint's tensors, without copying them.

Objective: turn the graph the exporter traced with placeholder matrices
(:mod:`optimum_wc.checkpoints.placeholders`) into the float model, every
weight constant a zero-copy view of the checkpoint's memory-mapped file.
A constant is recognised by its friendly name, ``self.<parameter>`` (or
``self.<module>._openvino_orig_weight`` in a float16/bfloat16 export), as
optimum-intel's exporter names it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import openvino as ov
from openvino import op as ov_op

from ..errors import ModelError

_PATCHED_16BIT_SUFFIX = "._openvino_orig_weight"  # optimum-intel's name for weights of float16/bfloat16 exports
# NumPy dtype of the checkpoint view -> the IR element type that can share its memory (bfloat16 is read as uint16).
_SHAREABLE = frozenset({("float32", "f32"), ("float16", "f16"), ("uint16", "bf16")})


def parameter_name(const_name: str) -> str:
    """``self.model.x.weight`` (or ``self.model.x._openvino_orig_weight``) -> ``model.x.weight``."""
    name = const_name[len("self."):] if const_name.startswith("self.") else const_name
    if name.endswith(_PATCHED_16BIT_SUFFIX):
        name = name[: -len(_PATCHED_16BIT_SUFFIX)] + ".weight"
    return name


def shared_constant(array: np.ndarray, element_type, name: str, bfloat16: bool = False):
    """A Constant of ``element_type`` over ``array``'s memory when the types agree, else over a converted copy."""
    if (array.dtype.name, element_type.get_type_name()) in _SHAREABLE:
        const = ov_op.Constant(ov.Tensor(array, ov.Shape(list(array.shape)), element_type), shared_memory=True)
    else:
        values = (array.astype(np.uint32) << 16).view(np.float32) if bfloat16 else np.asarray(array, dtype=np.float32)
        if element_type == ov.Type.bf16:  # round to nearest even
            bits = values.view(np.uint32).astype(np.uint64)
            values = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        elif element_type == ov.Type.f16:
            values = values.astype(np.float16)
        tensor = ov.Tensor(np.ascontiguousarray(values), ov.Shape(list(array.shape)), element_type)
        const = ov_op.Constant(tensor, shared_memory=False)
    const.set_friendly_name(name)
    return const


def bind_constants(model, placeholders: set[str], array_of: Callable[[str], np.ndarray],
                   is_bfloat16: Callable[[str], bool]) -> int:
    """Replace every constant named after a placeholder parameter by the checkpoint's tensor; return the count.

    ``array_of(parameter)`` gives the tensor as a NumPy view.  Raises
    :class:`~optimum_wc.errors.ModelError` when a placeholder has no constant
    (the exporter folded it into something else) or a constant's shape differs.
    """
    found: set[str] = set()
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Constant":
            continue
        param = parameter_name(node.get_friendly_name())
        if param not in placeholders:
            continue
        array = array_of(param)
        shape = tuple(int(d) for d in node.get_output_shape(0))
        if tuple(array.shape) != shape:
            raise ModelError(f"the IR's constant {node.get_friendly_name()} has shape {list(shape)}, the checkpoint's "
                             f"{param} {list(array.shape)}")
        new = shared_constant(array, node.get_element_type(), node.get_friendly_name(), is_bfloat16(param))
        new.output(0).get_tensor().set_names(node.output(0).get_names())
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(new.output(0))
        found.add(param)
    lost = sorted(placeholders - found)
    if lost:
        raise ModelError(f"the exported IR has no constant for {', '.join(lost[:3])}"
                         + (f" (and {len(lost) - 3} more)" if len(lost) > 3 else ""))
    return len(found)
