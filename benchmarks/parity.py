"""Is our compressed IR the same as NNCF's?  Constant-by-constant comparison by friendly name.

Both engines name the codes of a weight after the original float constant
(``<weight>``), with ``<weight>/zero_point`` and ``<weight>/scale`` (and
NVFP4's ``<weight>/second_order_scale``) beside it; a codebook format names
its indices ``<weight>_nncf_codebook_idxs`` and its table ``<weight>``.  A
*layer* is one codes (or indices) constant of any compressed element type;
it is identical when its codes, its zero point and its look-up table have
the same element type, shape and bytes in both IRs.  Scales (f16, E8M0,
E4M3, with the second-order scale) are compared the same way, separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ZERO_POINT, SCALE, SECOND, INDICES = "/zero_point", "/scale", "/second_order_scale", "_nncf_codebook_idxs"
CODE_TYPES = ("u4", "i4", "u8", "i8", "u3", "u2", "nf4", "f4e2m1", "f8e4m3")


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

    model = ov.Core().read_model(xml)
    out = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        name = op.get_friendly_name()
        kind = op.get_element_type().get_type_name()
        # (1-D float32 constants include a given codebook's look-up table)
        if kind in CODE_TYPES or name.endswith((SCALE, SECOND, ZERO_POINT)) or (kind == "f32" and len(op.shape) == 1):
            raw = np.array(op.get_tensor_view().data, copy=True).view(np.uint8).reshape(-1)
            out[name] = (op.get_element_type().get_type_name(), tuple(op.get_output_shape(0)), raw)
    return out


def _same(x, y) -> bool:
    return x is not None and y is not None and x[0] == y[0] and x[1] == y[1] and np.array_equal(x[2], y[2])


def compare_irs(xml_a: Path, xml_b: Path) -> Parity:
    """Compare the compressed constants of two IRs (see the module docstring)."""
    a, b = _constants(Path(xml_a)), _constants(Path(xml_b))

    def layers(consts):
        tables = {n[: -len(INDICES)] for n in consts if n.endswith(INDICES)}
        return {n for n, c in consts.items() if c[0] in CODE_TYPES and n not in tables
                and not n.endswith((ZERO_POINT, SCALE, SECOND))}

    def same_or_absent(x, y) -> bool:
        return x is y is None or _same(x, y)

    la, lb = layers(a), layers(b)
    result = Parity(layers_a=len(la), layers_b=len(lb), only_in_one=sorted(la ^ lb))
    for name in sorted(la & lb):
        base = name[: -len(INDICES)] if name.endswith(INDICES) else name
        codes_a, codes_b = a[name], b[name]
        if codes_a[0] != codes_b[0] or codes_a[1] != codes_b[1]:
            result.type_differs.append(name)
            continue
        table = (a.get(base), b.get(base)) if base != name else (None, None)
        if _same(codes_a, codes_b) and same_or_absent(a.get(base + ZERO_POINT), b.get(base + ZERO_POINT)) \
                and same_or_absent(*table):
            result.identical += 1
            if _same(a.get(base + SCALE), b.get(base + SCALE)) and same_or_absent(a.get(base + SECOND), b.get(base + SECOND)):
                result.scales_identical += 1
        else:
            result.values_differ.append(name)
    return result
