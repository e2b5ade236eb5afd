"""What an IR's weights are stored as, read from the graph alone.

Objective: for every weighted op of a model (a MatMul with a constant weight,
batched MoE experts included, and an embedding Gather), the constant that
stores its weight: the float weight itself, or the codes of a decompression
subgraph (``Constant(u4) -> Convert -> [Subtract] -> Multiply -> [Reshape]``),
found as the largest constant of the weight's constant subgraph (scales, zero
points and look-up tables are smaller).  :func:`stored_weights` lists them;
:func:`parameters_by_type` sums elements per element type, each constant
once (a tied embedding and lm_head share one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sites import skip_reason

FLOAT_TYPE_NAMES = frozenset({"f32", "f16", "bf16"})


@dataclass(frozen=True)
class StoredWeight:
    """The constant that stores the weight of ``op``."""

    op: str  # friendly name of the MatMul / Gather
    op_type: str
    constant: str  # friendly name of the stored constant
    element_type: str  # e.g. "u4", "i8", "f32"
    shape: tuple[int, ...]  # of the stored constant (the codes' shape for a compressed weight)

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def compressed(self) -> bool:
        return self.element_type not in FLOAT_TYPE_NAMES


def _constants_upstream(output) -> list | None:
    """The Constants the value ``output`` is computed from, or None when it depends on anything else."""
    found, seen, stack = [], set(), [output.get_node()]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = node.get_type_name()
        if kind == "Constant":
            found.append(node)
        elif kind in ("Parameter", "ReadValue") or node.get_input_size() == 0:
            return None
        else:
            stack.extend(value.get_node() for value in node.input_values())
    return found


def _weight_input(node):
    """The input value of ``node`` that is its weight (constant-derived), or None."""
    kind = node.get_type_name()
    if kind == "MatMul":
        ups = [_constants_upstream(node.input_value(p)) for p in (0, 1)]
        for port, other in ((1, 0), (0, 1)):
            if ups[port] and ups[other] is None:
                return ups[port]
        return None
    if kind == "Gather":
        table, indices = _constants_upstream(node.input_value(0)), _constants_upstream(node.input_value(1))
        return table if table and indices is None else None
    return None


def stored_weights(model) -> list[StoredWeight]:
    """Every weighted op's stored weight constant, in topological order (MatMuls that are not layers left out)."""
    out = []
    for node in model.get_ordered_ops():
        constants = _weight_input(node)
        if not constants or (node.get_type_name() == "MatMul" and skip_reason(node)):
            continue
        const = max(constants, key=lambda c: int(np.prod(c.get_output_shape(0))))
        shape = tuple(int(d) for d in const.get_output_shape(0))
        if len(shape) < 2:
            continue  # a scalar or vector operand: not a weight matrix
        out.append(StoredWeight(node.get_friendly_name(), node.get_type_name(), const.get_friendly_name(),
                                const.get_element_type().get_type_name(), shape))
    return out


def parameters_by_type(weights: list[StoredWeight]) -> dict[str, int]:
    """Stored elements per element type, each constant counted once."""
    unique = {w.constant: w for w in weights}
    totals: dict[str, int] = {}
    for w in unique.values():
        totals[w.element_type] = totals.get(w.element_type, 0) + w.num_elements
    return totals
