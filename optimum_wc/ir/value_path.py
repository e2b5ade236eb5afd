"""Attention's value path: which channel of a value projection each channel of the attention output carries.

In ``o_proj(attention(q, k, v_proj(x)))`` the attention output channel
``(head h, d)`` is a convex mix over tokens of the value channel
``(kv_head(h), d)``: data movement (Reshape, Transpose, Unsqueeze,
Broadcast for grouped-query heads, the KV cache's Concat with the past)
and ScaledDotProductAttention's value input keep channels apart.  Scaling
the value projection's output channel ``j`` by ``f_j`` therefore scales
every attention-output channel that carries ``j`` by ``f_j``, including the
cached past, which the same projection wrote.  :func:`value_path` finds
such a path upstream of an op and the channel map, by running the path's
ops on channel labels (dynamic dimensions taken as 1): no assumption on
head layout or repetition order is built in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .sites import source_constant, weight_of

# ops that move data without mixing channels, and the input port that carries the value
_MOVES = {"Reshape": 0, "Transpose": 0, "Unsqueeze": 0, "Squeeze": 0, "Broadcast": 0, "Convert": 0,
          "ScaledDotProductAttention": 2, "Concat": None}
# consumers a path node may have besides the next node of the path: they read shapes or store the state
_HARMLESS_USERS = ("ShapeOf", "Assign")
_STATE_HOPS = ("Gather", "Convert")  # what may sit between a ReadValue and the KV cache's Concat
_MAX_DEPTH = 16


def _is_state(output) -> bool:
    """True when ``output`` is a ReadValue, possibly behind a beam Gather / Convert."""
    node = output.get_node()
    for _ in range(3):
        if node.get_type_name() == "ReadValue":
            return True
        if node.get_type_name() not in _STATE_HOPS:
            return False
        node = node.input_value(0).get_node()
    return False


def _path_input(node) -> Any | None:
    """The input of a path ``node`` that carries the value, or None if ``node`` is not a pure data move."""
    kind = node.get_type_name()
    if kind not in _MOVES:
        return None
    if kind != "Concat":
        return node.input_value(_MOVES[kind])
    fresh = [node.input_value(i) for i in range(node.get_input_size()) if not _is_state(node.input_value(i))]
    return fresh[0] if len(fresh) == 1 else None


def _only_path_users(output, next_node) -> bool:
    keep = next_node.get_friendly_name()
    for target in output.get_target_inputs():
        user = target.get_node()
        if user.get_friendly_name() != keep and user.get_type_name() not in _HARMLESS_USERS:
            return False
    return True


def _static(partial_shape) -> tuple[int, ...] | None:
    """The shape with dynamic dimensions taken as 1 (batch, tokens), or None if the rank is dynamic."""
    if partial_shape.rank.is_dynamic:
        return None
    return tuple(d.get_length() if d.is_static else 1 for d in partial_shape)


def _move_labels(node, labels: np.ndarray) -> np.ndarray | None:
    """``node``'s output for the channel ``labels`` on its path input (an empty past); None if it cannot say."""
    out = _static(node.get_output_partial_shape(0))
    if out is None:
        return None
    kind = node.get_type_name()
    if kind == "Transpose":
        perm = source_constant(node.input_value(1))
        if perm is None:
            return None
        labels = np.transpose(labels, [int(a) for a in np.asarray(perm.get_data()).reshape(-1)])
    elif kind == "Broadcast":
        try:
            labels = np.broadcast_to(labels, out)
        except ValueError:
            return None
    elif kind in ("Reshape", "Unsqueeze", "Squeeze"):
        if int(np.prod(out)) != labels.size:
            return None
        labels = labels.reshape(out)
    return labels if labels.shape == out else None


def value_path(producer) -> tuple[Any, np.ndarray] | None:
    """The weighted MatMul whose output reaches ``producer``'s output through attention's value path, and the map.

    Returns ``(matmul, carried)``: ``carried[c]`` is the MatMul output channel
    (last axis) that channel ``c`` of ``producer``'s last axis carries.  None
    when the path holds anything but data moves and one attention value input,
    or when a node on it feeds anything besides the path, shape reads and the
    KV cache's state.
    """
    path, node, seen_attention = [producer], producer, False
    for _ in range(_MAX_DEPTH):
        source = _path_input(node)
        if source is None or not _only_path_users(source, node):
            return None
        seen_attention |= node.get_type_name() == "ScaledDotProductAttention"
        node = source.get_node()
        if node.get_type_name() == "MatMul":
            break
        path.append(node)
    else:
        return None
    if not seen_attention or weight_of(node) is None:
        return None
    shape = _static(node.get_output_partial_shape(0))
    if shape is None:
        return None
    labels = np.arange(shape[-1]).reshape((1,) * (len(shape) - 1) + (shape[-1],))
    labels = np.broadcast_to(labels, shape)
    for step in reversed(path):
        labels = _move_labels(step, labels)
        if labels is None:
            return None
    carried = np.asarray(labels).reshape(-1)
    if carried.size != int(np.prod(_static(producer.get_output_partial_shape(0))[-1:])):
        return None
    return node, carried
