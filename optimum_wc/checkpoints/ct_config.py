"""The settings of compressed-tensors (llm-compressor) checkpoints, from ``quantization_config``.

Each config group becomes a :class:`LayerGroup`; a scheme that cannot be
kept exactly is refused with the fix.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ExportError
from .settings import CT_FORMATS, CT_FP4_GROUPS, LayerGroup, PrequantizedFormat, name_list


def compressed_tensors_format(settings: dict, source: str) -> PrequantizedFormat:
    """llm-compressor's ``quantization_config``: integer weight schemes per config group, kept exactly."""
    status = settings.get("quantization_status", "compressed")
    if status != "compressed":
        raise ExportError(
            f"{source}: compressed-tensors quantization_status={status!r}: the weights are not stored compressed. "
            "Save the model with llm-compressor's save_pretrained(..., save_compressed=True)."
        )
    sparsity = settings.get("sparsity_config") or {}
    if not isinstance(sparsity, dict):
        raise ExportError(f"{source}: compressed-tensors sparsity_config is not a JSON object; fix the config.")
    if sparsity and str(sparsity.get("format", "dense")) != "dense":
        raise ExportError(
            f"{source}: compressed-tensors sparsity format {sparsity.get('format')!r} is not supported; optimum-wc "
            "reads dense quantized weights. Re-save the model without sparsity compression."
        )
    groups = settings.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ExportError(f"{source}: compressed-tensors quantization_config has no config_groups; fix the config.")
    top_format = str(settings.get("format") or "")
    parsed = tuple(_ct_group(name, group, top_format, source) for name, group in groups.items())
    first = parsed[0]
    ignore = name_list(settings.get("ignore") or None, f"{source}: compressed-tensors 'ignore'")
    return PrequantizedFormat(
        method="compressed-tensors", bits=first.bits, group_size=first.group_size, sym=first.sym,
        desc_act=any(g.act_order for g in parsed), checkpoint_format=first.checkpoint_format, source=source,
        layer_groups=parsed, ignore=ignore,
    )


def _ct_group(name: str, group: Any, top_format: str, source: str) -> LayerGroup:
    where = f"{source}: config group {name!r}"
    if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
        raise ExportError(f"{where} has no weights scheme; fix the config.")
    args = group["weights"]
    fmt = str(group.get("format") or top_format or "pack-quantized")
    if fmt not in CT_FORMATS:
        raise ExportError(
            f"{where}: compressed-tensors format {fmt!r} is not supported yet; optimum-wc keeps "
            f"{', '.join(CT_FORMATS)} weights exactly. Export the float model and compress it with "
            "WeightCompressionConfig instead."
        )
    kind, bits = str(args.get("type", "int")), args.get("num_bits")
    if fmt in CT_FP4_GROUPS:
        return _ct_fp4_group(where, group, fmt, args)
    fp8 = fmt == "float-quantized" and kind == "float" and bits == 8
    if not fp8 and (fmt == "float-quantized" or kind != "int" or bits not in (4, 8)):
        raise ExportError(
            f"{where}: {bits}-bit {kind} weights are not supported in {fmt!r}; optimum-wc keeps 4- and 8-bit "
            "integer weights (u4/i4/u8/i8 constants) and 8-bit float weights of float-quantized (f8e4m3) exactly."
        )
    if args.get("dynamic"):
        raise ExportError(f"{where}: dynamic weight quantization has no stored scales; fix the config.")
    strategy = str(args.get("strategy", "tensor"))
    if strategy == "group":
        group_size = args.get("group_size")
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
            raise ExportError(f"{where}: strategy 'group' needs a positive group_size, not {group_size!r}.")
    elif strategy in ("channel", "tensor"):
        group_size = -1 if strategy == "channel" else 0
    else:
        raise ExportError(
            f"{where}: weight strategy {strategy!r} is not supported; optimum-wc reads 'group', 'channel' and "
            "'tensor' weight scales."
        )
    if fp8 and (strategy == "group" or not args.get("symmetric", True)):
        raise ExportError(f"{where}: FP8 weights with strategy {strategy!r} / asymmetric are not supported; optimum-wc "
                          "keeps symmetric per-channel and per-tensor FP8 weights exactly.")
    return LayerGroup(targets=_targets(group, where), bits=int(bits), group_size=int(group_size),
                      sym=bool(args.get("symmetric", True)), act_order=str(args.get("actorder")) == "group",
                      checkpoint_format="naive-quantized" if fmt == "int-quantized" else fmt, float_weights=fp8)


def _targets(group: dict, where: str) -> tuple[str, ...]:
    """The group's targets: "Linear", module names, or ``re:<regex>`` (compiled here, once, to refuse a bad one)."""
    targets = name_list(group.get("targets") or None, f"{where}: 'targets'")
    for target in targets:
        if target.startswith("re:"):
            try:
                re.compile(target[3:])
            except re.error as exc:
                raise ExportError(f"{where}: target {target!r} is not a regular expression ({exc}); fix the "
                                  "config.") from exc
    return targets


def _ct_fp4_group(where: str, group: dict, fmt: str, args: dict) -> LayerGroup:
    """``nvfp4-pack-quantized`` (E2M1, groups of 16, E4M3 scales over a global scale) or ``mxfp4-pack-quantized``
    (E2M1, groups of 32, E8M0 scales): the only weight schemes those formats define."""
    strategy, group_size = CT_FP4_GROUPS[fmt]
    got = (str(args.get("type")), args.get("num_bits"), str(args.get("strategy")), args.get("group_size"),
           bool(args.get("symmetric", True)))
    if got != ("float", 4, strategy, group_size, True):
        raise ExportError(
            f"{where}: {fmt!r} weights must be symmetric 4-bit float with strategy {strategy!r} and group_size "
            f"{group_size}, not type={got[0]!r} num_bits={got[1]!r} strategy={got[2]!r} group_size={got[3]!r} "
            f"symmetric={got[4]}; fix the config (it does not describe these weights)."
        )
    return LayerGroup(targets=_targets(group, where), bits=4, group_size=group_size, sym=True, act_order=False,
                      checkpoint_format=fmt, float_weights=True)
