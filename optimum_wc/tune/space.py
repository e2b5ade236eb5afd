"""The candidates ``optimum-wc tune`` chooses from: layouts (what sets the size) times methods (what sets the quality).

A *layout* fixes which weights get how many bits: INT8 per channel, or a
4-bit integer mode with a group size and a ratio (the rest in INT8).  Its
size follows from the weight shapes alone (:func:`predicted_bytes`), so the
search can order layouts by size before compressing anything.  A *method*
is how the codes of a layout are chosen: round to nearest (data-free, a few
seconds) or a data-aware algorithm (tens of seconds to minutes).  On one
layout every method gives the same size (same modes, same group sizes; the
data-aware sensitivity of ``ratio < 1`` may move which layers are in 4 bits,
hence a slightly different size, measured after the run).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..config import CompressWeightsMode, WeightCompressionConfig
from ..engine.planning import plan_layers
from ..ir.sites import WeightSite

# A method: its name, the config fields it sets, and its rank in cost (cheapest first).
METHODS: dict[str, dict[str, Any]] = {
    "rtn": {},
    "awq_se": {"awq": True, "scale_estimation": True},
    "gptq_se_ao": {"gptq": True, "scale_estimation": True, "gptq_act_order": True},
    "gptq_se_ao_r3": {"gptq": True, "scale_estimation": True, "gptq_act_order": True, "gptq_refine_rounds": 3},
    # the strongest (last): GPTAQ on top of GPTQ + SE + act-order (SmolLM2 INT4 g128: 25.14 against r3's 25.32)
    "gptq_se_ao_aq": {"gptq": True, "scale_estimation": True, "gptq_act_order": True, "gptq_asymmetric": True},
}
DATA_AWARE_METHODS = tuple(m for m in METHODS if m != "rtn")
INT4_MODES = (CompressWeightsMode.INT4_ASYM, CompressWeightsMode.INT4_SYM)
DEFAULT_GROUP_SIZES = (128, 64, 32)
DEFAULT_RATIOS = (1.0, 0.9, 0.8)


@dataclass(frozen=True, order=True)
class Layout:
    """What decides the size: mode, group size (-1 per channel) and ratio of 4-bit parameters."""

    mode: str
    group_size: int = -1
    ratio: float = 1.0

    @property
    def name(self) -> str:
        if self.mode.startswith("int8"):
            return self.mode
        return f"{self.mode}_g{self.group_size}_r{self.ratio:g}"

    def config_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"mode": self.mode}
        if not self.mode.startswith("int8"):
            fields.update(group_size=self.group_size, ratio=self.ratio)
        return fields


@dataclass(frozen=True)
class Candidate:
    """One config to try: a layout compressed by a method."""

    layout: Layout
    method: str = "rtn"

    @property
    def name(self) -> str:
        return self.layout.name if self.method == "rtn" else f"{self.layout.name}+{self.method}"

    @property
    def data_aware(self) -> bool:
        return self.method != "rtn"

    def config_dict(self, calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The :class:`WeightCompressionConfig` dict of this candidate (``calibration``: subset_size etc.).

        Data-aware candidates with ``ratio < 1`` rank layers by the Hessian
        of their inputs (what the calibration data measures) instead of
        the weight error alone.
        """
        fields = self.layout.config_fields() | METHODS[self.method]
        if self.data_aware:
            fields.update(calibration or {})
            if self.layout.ratio < 1:
                fields["sensitivity_metric"] = "hessian_input_activation"
        return WeightCompressionConfig.from_dict(fields).to_dict()

    def key(self, calibration: Mapping[str, Any] | None = None) -> str:
        """A hash of the full config: the name of this candidate's cached result."""
        text = json.dumps(self.config_dict(calibration), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def layouts(group_sizes: Sequence[int] = DEFAULT_GROUP_SIZES, ratios: Sequence[float] = DEFAULT_RATIOS,
            modes: Iterable[CompressWeightsMode] = INT4_MODES) -> list[Layout]:
    """INT8 per channel (asymmetric) and every 4-bit mode x group size x ratio (backup INT8)."""
    out = [Layout(CompressWeightsMode.INT8_ASYM.value)]
    for mode in modes:
        out += [Layout(mode.value, g, float(r)) for g in group_sizes for r in ratios]
    return out


# -- sizes ------------------------------------------------------------------

_F16 = 2


def layer_bytes(mode: str | None, group_size: int, shape: Sequence[int], reduction_axis: int,
                float_itemsize: int = 4) -> int:
    """Bytes of one weight in the IR: codes, f16 scales and (asymmetric) zero points; as it was when ``mode`` is None.

    INT8 keeps one u8 code per weight and one scale (and u8 zero point) per
    output channel; INT4 packs two codes per byte with one scale (and u4 zero
    point) per group of ``group_size`` input channels (-1: one group).
    """
    n = 1
    for d in shape:
        n *= int(d)
    if mode is None:
        return n * float_itemsize
    in_channels = int(shape[reduction_axis])
    groups = n // (in_channels if group_size in (-1, None) else group_size)
    asym = mode.endswith("asym")
    if mode.startswith("int8"):
        return n + groups * _F16 + (groups if asym else 0)
    if mode.startswith("int4"):
        return (n + 1) // 2 + groups * _F16 + ((groups + 1) // 2 if asym else 0)
    raise ValueError(f"no size formula for mode {mode!r}")


def _plans(sites: Sequence[WeightSite], layout: Layout):
    config = WeightCompressionConfig.from_dict(layout.config_fields())
    return plan_layers(sites, config, sensitivity=lambda site: 0.0)


def plan_signature(sites: Sequence[WeightSite], layout: Layout) -> tuple:
    """Mode and group size of every weight: two layouts with one signature compress alike (e.g. when a group
    size is adjusted down to the one below on every layer)."""
    return tuple((p.mode.value if p.mode else None, p.group_size if p.mode else None) for p in _plans(sites, layout))


def predicted_bytes(sites: Sequence[WeightSite], layout: Layout, other_bytes: int) -> int:
    """Size of the weights file of ``layout``: ``other_bytes`` (constants that are not weights) plus every weight.

    Exact for ``ratio=1`` and INT8; for ``ratio < 1`` the 4-bit layers are
    taken in the sites' order (the real choice ranks them by sensitivity,
    so the measured size differs by a fraction of one layer).
    """
    plans = _plans(sites, layout)
    # a grouped weight is reshaped back to its shape by an int64 shape constant; the IR stores equal ones once
    reshapes = {tuple(p.site.shape) for p in plans if p.mode is not None and p.group_size not in (-1, None)}
    return other_bytes + 8 * sum(len(s) for s in reshapes) + sum(
        layer_bytes(p.mode.value if p.mode else None, p.group_size, p.site.shape, p.site.reduction_axis,
                    p.site.element_type.size) for p in plans
    )


def float_weight_bytes(sites: Sequence[WeightSite]) -> int:
    """Bytes of the weights as they are in the float IR (what :func:`predicted_bytes` replaces)."""
    return sum(s.num_weights * s.element_type.size for s in sites)
