"""The settings of a pre-quantized checkpoint, as read from its config files (typed, immutable)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ExportError


def name_list(value: Any, where: str) -> tuple[str, ...]:
    """A config's list of module names or patterns (one string: one name; null: none), refused when it is not."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    text = repr(value)
    raise ExportError(f"{where} must be a list of module names, not {text if len(text) <= 80 else text[:80] + '...'}; "
                      "fix the quantization config.")


CT_INT_FORMATS = ("pack-quantized", "naive-quantized", "int-quantized")
CT_FP4_GROUPS = {"nvfp4-pack-quantized": ("tensor_group", 16), "mxfp4-pack-quantized": ("group", 32)}
CT_FORMATS = (*CT_INT_FORMATS, "float-quantized", *CT_FP4_GROUPS)


@dataclass(frozen=True)
class LayerGroup:
    """compressed-tensors: the weight scheme of the layers a config group targets."""

    targets: tuple[str, ...]  # "Linear" (any linear layer), "re:<regex>" or a module name
    bits: int
    group_size: int  # -1: per output channel; 0: one scale for the whole tensor
    sym: bool
    act_order: bool  # "actorder": "group" -- a weight_g_idx tensor may reorder the input channels
    checkpoint_format: str  # "pack-quantized", "naive-quantized" or "float-quantized"
    float_weights: bool = False  # float-quantized (FP8 E4M3) and the FP4 packs

    @property
    def fp4(self) -> bool:
        """NVFP4 / MXFP4 packs: E2M1 nibbles with E4M3 (and a global scale) or E8M0 group scales."""
        return self.checkpoint_format in CT_FP4_GROUPS


@dataclass(frozen=True)
class LayerOverride:
    """A per-layer exception to the checkpoint's settings (GPTQModel ``dynamic``, AutoRound ``extra_config``)."""

    pattern: str  # a module name, or a regular expression matched at the start of one
    regex: bool
    skip: bool = False  # the layer is left float
    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None


@dataclass(frozen=True)
class PrequantizedFormat:
    """How a pre-quantized checkpoint stores its linear layers."""

    method: str  # "gptq", "awq" or "compressed-tensors"
    bits: int  # 4 or 8 (compressed-tensors: of the first config group)
    group_size: int  # -1: one group over all input channels
    sym: bool
    desc_act: bool
    # "gptq" (v1: zero points stored minus one), "gptq_v2", "awq_gemm", or compressed-tensors' format
    checkpoint_format: str
    source: str  # the file the settings were read from
    layer_groups: tuple[LayerGroup, ...] = ()  # compressed-tensors: the config groups, in order
    ignore: tuple[str, ...] = ()  # compressed-tensors: layers left float
    overrides: tuple[LayerOverride, ...] = ()  # per-layer settings; module names first, then regexes in order
    producer: str = ""  # the tool named by the config when it is not the layout's ("auto-round")
    experts_as: str = ""  # MXFP4 MoE experts: the IR's codes, "i8" or "f4e2m1" (see checkpoints.mxfp4)

    def for_layer(self, prefix: str) -> PrequantizedFormat | None:
        """The settings of layer ``prefix`` after its first matching override; None when an override skips it."""
        for o in self.overrides:
            if (re.match(o.pattern, prefix) is not None) if o.regex else o.pattern == prefix:
                if o.skip:
                    return None
                return replace(self, bits=self.bits if o.bits is None else o.bits,
                               group_size=self.group_size if o.group_size is None else o.group_size,
                               sym=self.sym if o.sym is None else o.sym, overrides=())
        return self

    def group_of(self, prefix: str) -> LayerGroup | None:
        """compressed-tensors: the config group of layer ``prefix`` (a name beats a regex beats "Linear")."""
        ranked = []
        for group in self.layer_groups:
            for target in group.targets:
                if target == prefix:
                    ranked.append((0, group))
                elif target.startswith("re:") and re.match(target[3:], prefix):
                    ranked.append((1, group))
                elif target == "Linear":
                    ranked.append((2, group))
        return min(ranked, key=lambda r: r[0])[1] if ranked else None

    @property
    def zero_point_offset(self) -> int:
        """What to add to a stored zero point to get the real one (1 for GPTQ v1, else 0)."""
        return 1 if self.checkpoint_format == "gptq" else 0

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded in the IR's rt_info (``experts_as`` only for MXFP4 experts, so that the
        other formats' records stay as they were before it existed)."""
        out = asdict(self)
        if not out["experts_as"]:
            del out["experts_as"]
        return out
