"""The weight formats as data: how each compression mode stores a weight.

One :class:`WeightFormat` per :class:`~optimum_wc.config.CompressWeightsMode`
names the element type of the codes and of the scales as OpenVINO spells
them, how a code turns back into a value, and where the zero point comes
from.  The maths (:mod:`.lowering`, :mod:`.float_lowering`) and the IR
writer (:mod:`optimum_wc.ir.decompression`) look a mode up here instead of
branching on it, so a new format is one new row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CompressWeightsMode as M
from . import minifloat


@dataclass(frozen=True)
class WeightFormat:
    """How one mode stores a weight.

    ``code_type``: OpenVINO element type of the codes; ``code_bits`` their
    width in the packed IR.  ``scale_type``: element type of the per-group
    scale.  ``zero_point``: ``"none"``, ``"per_group"`` (asymmetric integers)
    or ``"offset"`` (symmetric levels stored unsigned, shifted by ``2^(b-1)``
    and shifted back by one scalar zero point).  ``max_value``: the largest
    code value a group's largest magnitude is scaled to.  ``global_scale``:
    the per-group scales are themselves E4M3 codes with one float32 scale
    per weight (NVFP4).  ``codebook``: codes index a look-up table;
    ``signed_scale``: its group scale carries the sign of the group's
    largest-magnitude weight, so the table need not be symmetric (adaptive).
    """

    mode: M
    code_type: str
    code_bits: int
    scale_type: str = "f16"
    zero_point: str = "none"
    max_value: float = 0.0
    global_scale: bool = False
    codebook: bool = False
    signed_scale: bool = False  # each group's largest-magnitude weight maps to the table's largest entry, sign and all

    @property
    def is_integer(self) -> bool:
        return self.mode.is_integer

    @property
    def offset(self) -> int:
        """What the stored codes of an ``"offset"`` format add to the signed levels."""
        return 2 ** (self.code_bits - 1) if self.zero_point == "offset" else 0

    def encode(self, normalized: np.ndarray, codebook: np.ndarray | None = None) -> np.ndarray:
        """Codes (uint8) of weights already divided by their scale (float formats and codebooks)."""
        if self.codebook:
            return minifloat.codebook_codes(normalized, codebook)
        return _ENCODERS[self.code_type](normalized)

    def values(self, codebook: np.ndarray | None = None) -> np.ndarray:
        """Code -> value table (float32) of a float format or codebook."""
        if self.codebook:
            return np.asarray(codebook, dtype=np.float32)
        return _VALUES[self.code_type]


_ENCODERS = {"nf4": minifloat.nf4_codes, "f4e2m1": minifloat.e2m1_codes, "f8e4m3": minifloat.e4m3_codes}
_VALUES = {"nf4": minifloat.NF4_VALUES, "f4e2m1": minifloat.E2M1_VALUES, "f8e4m3": minifloat.E4M3_VALUES}

FORMATS: dict[M, WeightFormat] = {f.mode: f for f in (
    WeightFormat(M.INT8_ASYM, "u8", 8, zero_point="per_group"),
    WeightFormat(M.INT8_SYM, "i8", 8),
    WeightFormat(M.INT4_ASYM, "u4", 4, zero_point="per_group"),
    WeightFormat(M.INT4_SYM, "i4", 4),
    WeightFormat(M.INT3_SYM, "u3", 3, zero_point="offset"),
    WeightFormat(M.INT2_SYM, "u2", 2, zero_point="offset"),
    WeightFormat(M.NF4, "nf4", 4, max_value=1.0),
    WeightFormat(M.FP4, "f4e2m1", 4, max_value=minifloat.E2M1_MAX),
    WeightFormat(M.FP8_E4M3, "f8e4m3", 8, max_value=minifloat.E4M3_MAX),
    WeightFormat(M.MXFP4, "f4e2m1", 4, scale_type="f8e8m0", max_value=minifloat.E2M1_MAX),
    WeightFormat(M.MXFP8_E4M3, "f8e4m3", 8, scale_type="f8e8m0", max_value=minifloat.E4M3_MAX),
    WeightFormat(M.NVFP4, "f4e2m1", 4, scale_type="f8e4m3", max_value=minifloat.E2M1_MAX, global_scale=True),
    WeightFormat(M.CB4, "u4", 4, codebook=True),
    WeightFormat(M.CODEBOOK, "u4", 4, codebook=True),
    WeightFormat(M.ADAPTIVE_CODEBOOK, "u4", 4, codebook=True, signed_scale=True),
)}

# CB4's fixed table: 16 values that E4M3 represents exactly.
CB4_CODEBOOK = np.array([-3.5, -2.5, -1.875, -1.375, -1.0, -0.625, -0.3125, 0.0,
                         0.28125, 0.5625, 0.875, 1.125, 1.5, 2.0, 2.5, 3.5], dtype=np.float32)


def format_of(mode: M, codebook=None) -> WeightFormat:
    """The format of ``mode``; ``codebook``: its table, or the number of entries (more than 16 take 8-bit indices)."""
    fmt = FORMATS[mode]
    size = 16 if codebook is None else (codebook if isinstance(codebook, int) else len(codebook))
    if fmt.codebook and size > 16:
        return WeightFormat(mode, "u8", 8, codebook=True, signed_scale=fmt.signed_scale)
    return fmt


def codebook_of(mode: M, codebook=None) -> np.ndarray | None:
    """The float32 look-up table ``mode`` uses: CB4's fixed one, or the given one (adaptive: CB4's when none is given)."""
    if not mode.is_codebook:
        return None
    if mode is M.CB4 or codebook is None:
        return CB4_CODEBOOK.copy()
    return np.asarray(codebook, dtype=np.float32)
