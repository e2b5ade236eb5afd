"""Which weight gets which precision: ignored scope, group sizes, mixed precision.

Objective of the mixed-precision step (``ratio < 1``): among the
ratio-defining weights, give the primary 4-bit mode to the least sensitive
ones, in ascending order of sensitivity, while the share of 4-bit
*parameters* stays below ``ratio``; the others get the backup mode.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..config import (
    MIN_ADJUSTED_GROUP_SIZE,
    BackupMode,
    CompressWeightsMode,
    GroupSizeFallback,
    IgnoredScope,
    WeightCompressionConfig,
)
from ..errors import ConfigError, GroupSizeError
from ..ir.sites import WeightSite
from ..quant.formats import codebook_of

logger = logging.getLogger("optimum_wc")


@dataclass
class LayerPlan:
    """The decision for one weight: ``mode`` None means it stays float."""

    site: WeightSite
    mode: CompressWeightsMode | None
    group_size: int
    ratio_defining: bool = False
    note: str = ""  # why it is not in the primary mode, or that its group size was adjusted
    codebook: np.ndarray | None = None  # the float32 look-up table of a codebook mode

    def is_primary_matmul(self, mode: CompressWeightsMode) -> bool:
        """A 2-D MatMul weight planned in ``mode``: what AWQ and the data-aware per-layer steps work on."""
        return self.mode is mode and self.site.kind == "matmul" and len(self.site.shape) == 2

    def record(self) -> dict[str, Any]:
        """The layer's entry of the IR's rt_info and of the report (``relative_error`` filled in when compressed)."""
        return {
            "name": self.site.name,
            "ops": list(self.site.op_names),
            "kind": self.site.kind,
            "shape": list(self.site.shape),
            "num_weights": self.site.num_weights,
            "mode": self.mode.value if self.mode else "float",
            "group_size": self.group_size if self.mode else None,
            **({"codebook_size": len(self.codebook)} if self.codebook is not None else {}),
            "ratio_defining": self.ratio_defining,
            "note": self.note,
            "relative_error": None if self.mode else 0.0,
        }


def ignored_site_names(sites: Sequence[WeightSite], scope: IgnoredScope) -> set[str]:
    """Names of the sites the ignored scope removes; every rule must match something.

    A rule matches a site through its weight name or the name or op type of
    any op that uses it; patterns are regular expressions matched from the
    start of the name (``re.match``), as in NNCF.
    """
    ignored: set[str] = set()
    for rule, kind in [(n, "names") for n in scope.names] + [(p, "patterns") for p in scope.patterns] + [
        (t, "types") for t in scope.types
    ]:
        if kind == "patterns":
            try:
                regex = re.compile(rule)
            except re.error as exc:
                raise ConfigError(f"ignored_scope pattern {rule!r} is not a valid regular expression: {exc}.") from exc
        hit = {
            s.name
            for s in sites
            if (kind == "names" and (rule == s.name or rule in s.op_names))
            or (kind == "patterns" and any(regex.match(n) for n in [s.name, *s.op_names]))
            or (kind == "types" and rule in s.op_types)
        }
        if not hit:
            examples = ", ".join(repr(n) for n in [s.op_names[0] for s in sites][:3])
            raise ConfigError(
                f"ignored_scope {kind} entry {rule!r} matches no weighted layer; check the spelling "
                f"(layer names look like {examples}; types are 'MatMul' and 'Gather')."
            )
        ignored |= hit
    return ignored


def adjusted_group_size(in_channels: int) -> int | None:
    """Largest power of two dividing ``in_channels`` if it is >= 32, else None."""
    size = in_channels & -in_channels
    return size if size >= MIN_ADJUSTED_GROUP_SIZE else None


def plan_layers(
    sites: Sequence[WeightSite],
    config: WeightCompressionConfig,
    sensitivity: Callable[[WeightSite], float],
) -> list[LayerPlan]:
    """Decide mode and group size for every site (in the sites' order)."""
    ignored = ignored_site_names(sites, config.ignored_scope) if config.ignored_scope else set()
    backup, backup_group = backup_precision(config)
    adjust = config.group_size_fallback is GroupSizeFallback.ADJUST
    plans = [
        LayerPlan(s, None, -1, note="ignored scope")
        if s.name in ignored
        else _backup_plan(LayerPlan(s, backup, -1, note="" if backup else "backup mode none"), backup_group, adjust)
        for s in sites
    ]
    active = [p for p in plans if p.site.name not in ignored]
    if config.mode.is_int8:
        for p in active:
            p.mode, p.group_size, p.ratio_defining, p.note = config.mode, -1, True, ""
        return plans

    ratio_defining = _ratio_defining(plans, ignored, config.all_layers)
    ratio_defining = _apply_group_sizes(ratio_defining, config)
    for p in ratio_defining:
        p.ratio_defining = True
    primary = set(id(p) for p in _select_primary(ratio_defining, config.ratio, sensitivity))
    codebook = codebook_of(config.mode, config.codebook)
    for p in ratio_defining:
        if id(p) in primary:
            p.mode, p.note, p.codebook = config.mode, p.note, codebook
        else:
            p.mode = backup
            p.note = "mixed precision (ratio)" if backup else "mixed precision (ratio), backup mode none"
            _backup_plan(p, backup_group, adjust)
    _note_uncalibrated(plans, config)
    return plans


UNCALIBRATED_NOTE = "rounded to nearest: the data-aware steps take 2-D weights (not MoE experts)"


def _note_uncalibrated(plans: list[LayerPlan], config: WeightCompressionConfig) -> None:
    """Say so, per layer and in the log, when a primary-mode weight is not one the data-aware steps work on.

    AWQ, scale estimation, GPTQ and LoRA correction take 2-D MatMul weights
    (:meth:`LayerPlan.is_primary_matmul`); batched MoE experts
    ``[experts, out, in]`` are rounded to nearest.
    """
    if not (config.awq or config.scale_estimation or config.gptq or config.lora_correction):
        return
    left = [p for p in plans if p.mode is config.mode and p.site.kind == "matmul" and not p.is_primary_matmul(p.mode)]
    for p in left:
        p.note = (p.note + "; " if p.note else "") + UNCALIBRATED_NOTE
    if left:
        logger.warning("%d MoE expert weight(s) (%s, ...) are %s.", len(left), left[0].site.name, UNCALIBRATED_NOTE)


def backup_precision(config: WeightCompressionConfig) -> tuple[CompressWeightsMode | None, int]:
    """The backup mode and its group size, as NNCF has them: INT8 per channel, FP8 in the primary
    group size, MXFP8 in groups of 32."""
    backup = config.effective_backup_mode
    if backup is BackupMode.FP8_E4M3:
        return backup.as_mode(), config.effective_group_size
    if backup is BackupMode.MXFP8_E4M3:
        return backup.as_mode(), CompressWeightsMode.MXFP8_E4M3.default_group_size
    return backup.as_mode(), -1


def _backup_plan(p: LayerPlan, group_size: int, adjust: bool) -> LayerPlan:
    """Put ``p`` in the backup mode's group size.

    Where that size does not divide the layer's input channels (NNCF fails
    there), the ADJUST fallback's size is used, else one scale per channel.
    """
    p.group_size = -1
    if p.mode is None or group_size == -1:
        return p
    if p.site.in_channels % group_size == 0:
        p.group_size = group_size
        return p
    adjusted = adjusted_group_size(p.site.in_channels) if adjust else None
    p.group_size = -1 if adjusted is None else adjusted
    p.note = (p.note + "; " if p.note else "") + f"backup group size {group_size} does not divide " \
        f"{p.site.in_channels} input channels: " + ("per channel" if adjusted is None else f"{adjusted}")
    return p


def _ratio_defining(plans: list[LayerPlan], ignored: set[str], all_layers: bool) -> list[LayerPlan]:
    """MatMul weights but the last one, plus embeddings and the last MatMul with ``all_layers``.

    As in NNCF, when the last MatMul's weight is shared with an earlier op
    (tied embeddings) or ignored, no MatMul is dropped for being last.
    """
    matmuls = [p for p in plans if p.site.kind == "matmul" and p.site.name not in ignored]
    last = max(plans, key=lambda p: p.site.op_indices[-1], default=None)
    last_op_has_own_weight = last is not None and len(last.site.op_indices) == 1 and last.site.name not in ignored
    if not all_layers and matmuls and last_op_has_own_weight:
        matmuls[-1].note = "last layer (all_layers=False)"
        matmuls = matmuls[:-1]
    if all_layers:
        matmuls += [p for p in plans if p.site.kind == "embedding" and p.site.name not in ignored]
    else:
        for p in plans:
            if p.site.kind == "embedding" and p.site.name not in ignored:
                p.note = "embedding (all_layers=False)"
    return matmuls


def _apply_group_sizes(ratio_defining: list[LayerPlan], config: WeightCompressionConfig) -> list[LayerPlan]:
    """Set each layer's group size; drop from the ratio-defining set those that cannot take one."""
    gs = config.effective_group_size
    if gs == -1:
        return ratio_defining
    bad = [p for p in ratio_defining if p.site.in_channels % gs]
    if bad and config.group_size_fallback is GroupSizeFallback.ERROR:
        listed = "; ".join(f"{p.site.op_names[0]} {list(p.site.shape)}" for p in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise GroupSizeError(
            f"group_size={gs} does not divide the input channels of {len(bad)} layer(s): {listed}{more}. "
            "Choose a group size that divides them, or set group_size_fallback='adjust' (use the largest "
            "power-of-two divisor >= 32) or 'ignore' (keep those layers in the backup precision)."
        )
    kept = []
    for p in ratio_defining:
        p.group_size = gs
        if p.site.in_channels % gs == 0:
            kept.append(p)
            continue
        adjustable = config.group_size_fallback is GroupSizeFallback.ADJUST and config.mode.fixed_group_size is None
        adjusted = adjusted_group_size(p.site.in_channels) if adjustable else None
        if adjusted is not None:
            p.group_size, p.note = adjusted, f"group size adjusted {gs} -> {adjusted}"
            kept.append(p)
        else:
            p.note = f"group size {gs} does not divide {p.site.in_channels} input channels: backup precision"
            _backup_plan(p, backup_precision(config)[1], config.group_size_fallback is GroupSizeFallback.ADJUST)
    return kept


def _select_primary(
    ratio_defining: list[LayerPlan], ratio: float, sensitivity: Callable[[WeightSite], float]
) -> list[LayerPlan]:
    """Least sensitive first, while the 4-bit share of parameters stays below ``ratio``."""
    if ratio >= 1 or not ratio_defining:
        return list(ratio_defining)
    total = sum(p.site.num_weights for p in ratio_defining)
    scores = [sensitivity(p.site) for p in ratio_defining]
    order = sorted(range(len(ratio_defining)), key=lambda i: (scores[i], i))
    chosen, n4 = [], 0
    for i in order:
        n = ratio_defining[i].site.num_weights
        if (n4 + n) / total >= ratio:
            break
        chosen.append(ratio_defining[i])
        n4 += n
    return chosen
