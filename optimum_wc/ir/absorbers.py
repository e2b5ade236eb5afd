"""Where AWQ's inverse scale can go: graph patterns that absorb a per-channel factor, as data.

AWQ multiplies the weights of the MatMuls that share an input ``X`` by
``diag(s)`` and needs ``X diag(s)^-1`` upstream.  :data:`ABSORBERS` lists,
in order of preference, the producer patterns that can take that factor and
the edit that does it: a norm's constant gain, the up-projection of a gated
linear unit, the value projection behind attention, and, as a last resort, a
Multiply inserted on the activation.  An absorber may tie channels
(``ties``): the value projection of grouped-query attention feeds several
heads per channel, so those channels must share one scale.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from .sites import FLOAT_TYPES, activation_input, edit_float_weight, source_constant, weight_of
from .value_path import value_path

@dataclass(frozen=True)
class Absorber:
    """A graph pattern whose op can take the inverse AWQ scale, and the edit that does it."""

    name: str
    matches: Callable[[Any, Sequence[Any]], bool]
    absorb: Callable[[Any, Sequence[Any], np.ndarray, dict], None]
    # channel -> class: channels of one class must get equal scales (None: all free)
    ties: Callable[[Any], np.ndarray] | None = None


def _only_feeds(producer, consumers) -> bool:
    """True when every user of ``producer``'s output is one of ``consumers`` (or reads only its shape)."""
    names = {c.get_friendly_name() for c in consumers}
    return all(t.get_node().get_friendly_name() in names or t.get_node().get_type_name() == "ShapeOf"
               for t in producer.output(0).get_target_inputs())


def _constant_operand(node) -> tuple[int, Any] | None:
    for port in range(node.get_input_size()):
        const = source_constant(node.input_value(port))
        if const is not None and const.get_element_type() in FLOAT_TYPES:
            return port, const
    return None


def is_constant_scaling(producer, consumers) -> bool:
    """``x * c`` with a float constant ``c`` varying only along the last axis (a norm's gain)."""
    if producer.get_type_name() != "Multiply" or not _only_feeds(producer, consumers):
        return False
    found = _constant_operand(producer)
    if found is None:
        return False
    shape = list(found[1].get_output_shape(0))
    channels = producer.get_output_partial_shape(0)[-1]
    return bool(shape) and all(d == 1 for d in shape[:-1]) and channels.is_static and shape[-1] == channels.get_length()


def scale_constant_operand(producer, consumers, factor: np.ndarray, context: dict) -> None:
    """Multiply the constant operand of ``producer`` by ``factor`` along its last axis."""
    port, const = _constant_operand(producer)
    data = np.asarray(const.get_data(), dtype=np.float32) * factor.astype(np.float32)
    new = ops.constant(data.astype(np.float32), name=f"{const.get_friendly_name()}/awq")
    producer.input(port).replace_source_output(new.output(0))


def _gating_matmul(producer):
    """The MatMul with a constant weight that feeds ``producer`` directly and nothing else, if any."""
    for port in range(producer.get_input_size()):
        node = producer.input_value(port).get_node()
        if node.get_type_name() == "MatMul" and weight_of(node) is not None and len(node.output(0).get_target_inputs()) == 1:
            return node
    return None


def is_gated_linear(producer, consumers) -> bool:
    """``act(gate) * up(x)``: a Multiply fed by a weighted MatMul whose output it alone uses."""
    return (
        producer.get_type_name() == "Multiply"
        and _only_feeds(producer, consumers)
        and _constant_operand(producer) is None
        and _gating_matmul(producer) is not None
    )


def scale_gated_linear_rows(producer, consumers, factor: np.ndarray, context: dict) -> None:
    """Scale the output channels of the MatMul feeding ``producer`` by ``factor``."""
    _scale_output_channels(_gating_matmul(producer), factor, context)


def is_attention_value(producer, consumers) -> bool:
    """``producer`` is attention's output, reached from a weighted value projection by data moves only."""
    return _only_feeds(producer, consumers) and value_path(producer) is not None


def value_channels(producer) -> np.ndarray:
    """The value-projection channel that each channel of ``producer`` carries (the ties of :func:`is_attention_value`)."""
    return value_path(producer)[1]


def scale_value_projection_rows(producer, consumers, factor: np.ndarray, context: dict) -> None:
    """Scale the value projection's output channels: channel ``j`` by the (tied) factor of the channels carrying it."""
    matmul, carried = value_path(producer)
    per_channel = np.ones(matmul.get_output_partial_shape(0)[-1].get_length(), dtype=np.float32)
    per_channel[carried] = factor  # tied channels hold equal factors: any of them will do
    if not np.array_equal(per_channel[carried], factor.astype(np.float32)):
        raise ValueError(f"channels of {producer.get_friendly_name()} that share a value channel got unequal scales")
    _scale_output_channels(matmul, per_channel, context)


def _scale_output_channels(matmul, factor: np.ndarray, context: dict) -> None:
    site = context["all_sites_by_op"].get(matmul.get_friendly_name())
    if site is None:
        raise ValueError(f"no weight site for {matmul.get_friendly_name()}")
    out_axis = 1 - site.reduction_axis % 2
    shape = [1, 1]
    shape[out_axis] = -1
    edit_float_weight(site, functools.partial(_scale_rows, factor=factor.reshape(shape)), context.get("lazy", False))


def _scale_rows(w: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return np.asarray(w, dtype=np.float32) * factor


def insert_activation_scale(producer, consumers, factor: np.ndarray, context: dict) -> None:
    """Insert ``x * factor`` between the activation and the given MatMuls."""
    source = activation_input(consumers[0])
    scale = ops.constant(factor.astype(np.float32), name=f"{source.get_node().get_friendly_name()}/awq_scale")
    if source.get_element_type() != ov.Type.f32:
        scale = ops.convert(scale, source.get_element_type())
    scaled = ops.multiply(source, scale, name=f"{source.get_node().get_friendly_name()}/awq_multiply")
    for matmul in consumers:
        port = 1 - weight_of(matmul)[1]
        matmul.input(port).replace_source_output(scaled.output(0))


ABSORBERS: tuple[Absorber, ...] = (
    Absorber("norm gain (Multiply by a constant)", is_constant_scaling, scale_constant_operand),
    Absorber("gated linear (Multiply fed by a MatMul)", is_gated_linear, scale_gated_linear_rows),
    Absorber("attention value projection", is_attention_value, scale_value_projection_rows, value_channels),
    Absorber("inserted Multiply", lambda producer, consumers: True, insert_activation_scale),
)


def find_absorber(producer, consumers) -> Absorber | None:
    """The first of :data:`ABSORBERS` whose pattern ``producer`` (feeding ``consumers``) matches."""
    return next((a for a in ABSORBERS if a.matches(producer, consumers)), None)
