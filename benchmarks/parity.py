"""Is our compressed IR the same as NNCF's?  Constant-by-constant comparison by friendly name.

Both engines name the integer codes of a weight after the original float
constant (``<weight>``), with ``<weight>/zero_point`` and ``<weight>/scale``
beside it.  A *layer* is one codes constant (u4/i4/u8/i8); it is identical
when its codes and its zero point have the same element type, shape and
bytes in both IRs.  Scales (f16) are compared the same way, separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ZERO_POINT, SCALE = "/zero_point", "/scale"
INTEGER_TYPES = ("u4", "i4", "u8", "i8")


@dataclass
class Parity:
    """Outcome of comparing two compressed IRs (``a`` = NNCF, ``b`` = ours)."""

    layers_a: int = 0
    layers_b: int = 0
    identical: int = 0  # codes and zero point byte-identical
    scales_identical: int = 0
    type_differs: list[str] = field(default_factory=list)  # e.g. u4 in one, u8 in the other
    values_differ: list[str] = field(default_factory=list)  # same type and shape, other bytes
    only_in_one: list[str] = field(default_factory=list)

    @property
    def all_identical(self) -> bool:
        return self.identical == self.layers_a == self.layers_b and self.scales_identical == self.identical

    def summary(self) -> str:
        """E.g. ``211/211 (scales 211)``: identical layers / NNCF's layers."""
        return f"{self.identical}/{self.layers_a} (scales {self.scales_identical})"

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary(), "all_identical": self.all_identical}


def _constants(xml: Path) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    """Integer and scale constants of an IR: name -> (element type name such as ``u4``, shape, raw bytes)."""
    import openvino as ov

    integer_types = (ov.Type.u4, ov.Type.i4, ov.Type.u8, ov.Type.i8)
    model = ov.Core().read_model(xml)
    out = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        name = op.get_friendly_name()
        if op.get_element_type() in integer_types or name.endswith(SCALE):
            raw = np.array(op.get_tensor_view().data, copy=True).view(np.uint8).reshape(-1)
            out[name] = (op.get_element_type().get_type_name(), tuple(op.get_output_shape(0)), raw)
    return out


def _same(x, y) -> bool:
    return x is not None and y is not None and x[0] == y[0] and x[1] == y[1] and np.array_equal(x[2], y[2])


def compare_irs(xml_a: Path, xml_b: Path) -> Parity:
    """Compare the compressed constants of two IRs (see the module docstring)."""
    a, b = _constants(Path(xml_a)), _constants(Path(xml_b))

    def layers(consts):
        return {n for n, c in consts.items() if c[0] in INTEGER_TYPES and not n.endswith(ZERO_POINT)}

    la, lb = layers(a), layers(b)
    result = Parity(layers_a=len(la), layers_b=len(lb), only_in_one=sorted(la ^ lb))
    for name in sorted(la & lb):
        codes_a, codes_b = a[name], b[name]
        zp_a, zp_b = a.get(name + ZERO_POINT), b.get(name + ZERO_POINT)
        if codes_a[0] != codes_b[0] or codes_a[1] != codes_b[1]:
            result.type_differs.append(name)
            continue
        if _same(codes_a, codes_b) and (zp_a is zp_b is None or _same(zp_a, zp_b)):
            result.identical += 1
            if _same(a.get(name + SCALE), b.get(name + SCALE)):
                result.scales_identical += 1
        else:
            result.values_differ.append(name)
    return result
