"""Which pre-quantized format a checkpoint folder holds, read from its config files alone.

A checkpoint whose ``config.json`` (or a ``quantize_config.json`` beside the
weights, as AutoGPTQ and GPTQModel write it) says ``quant_method`` ``"gptq"``
or ``"awq"`` holds integer codes, scales and zero points for its linear
layers.  :func:`detect_prequantized` returns their :class:`PrequantizedFormat`
or None, and refuses, with the fix, a variant that cannot be kept exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError

SIDECAR = "quantize_config.json"


@dataclass(frozen=True)
class PrequantizedFormat:
    """How a pre-quantized checkpoint stores its linear layers."""

    method: str  # "gptq" or "awq"
    bits: int  # 4 or 8
    group_size: int  # -1: one group over all input channels
    sym: bool
    desc_act: bool
    checkpoint_format: str  # "gptq" (v1: zero points stored minus one), "gptq_v2", or "awq_gemm"
    source: str  # the file the settings were read from

    @property
    def zero_point_offset(self) -> int:
        """What to add to a stored zero point to get the real one (1 for GPTQ v1, else 0)."""
        return 1 if self.checkpoint_format == "gptq" else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}; fix or remove the file.") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path} does not hold a JSON object; fix or remove the file.")
    return data


def detect_prequantized(model_id: str | os.PathLike) -> PrequantizedFormat | None:
    """The GPTQ/AWQ format of the checkpoint folder ``model_id``, or None for anything else.

    Settings come from ``quantization_config`` in ``config.json`` and from a
    ``quantize_config.json`` beside the weights (AutoGPTQ, GPTQModel); when both
    give a setting they must agree.  Raises :class:`ExportError` for a GPTQ/AWQ
    variant that cannot be kept exactly (2/3 bits, Marlin/GEMV layouts, ...).
    """
    path = Path(str(model_id))
    if not path.is_dir():
        return None
    config_file, sidecar_file = path / "config.json", path / SIDECAR
    from_config = None
    if config_file.is_file():
        try:
            from_config = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config")
        except (OSError, ValueError, AttributeError):
            return None  # check_model_source reports a broken config.json
    sidecar = read_json(sidecar_file) if sidecar_file.is_file() else None
    if not from_config and not sidecar:
        return None
    if from_config is not None and not isinstance(from_config, dict):
        raise ExportError(f"{config_file}: quantization_config is not a JSON object; fix the file.")
    method = str((from_config or {}).get("quant_method") or (sidecar or {}).get("quant_method") or "gptq").lower()
    if from_config and not from_config.get("quant_method") and not (sidecar or {}).get("quant_method"):
        return None  # a quantization_config without a method: not a GPTQ/AWQ checkpoint
    if method not in ("gptq", "awq"):
        return None  # bitsandbytes, fp8, ...: not handled here
    merged: dict[str, Any] = {}
    for data in (sidecar, from_config):  # config.json last: its values are checked against the sidecar's
        for key, value in (data or {}).items():
            if key in merged and key in _CHECKED_KEYS and merged[key] != value:
                raise ExportError(
                    f"{path}: {key}={merged[key]!r} in {SIDECAR} but {key}={value!r} in config.json's "
                    "quantization_config; the two must agree: fix the one that does not describe the weights."
                )
            merged[key] = value
    source = str(config_file if from_config else sidecar_file)
    return _gptq_format(merged, source) if method == "gptq" else _awq_format(merged, source)


_CHECKED_KEYS = frozenset(
    {"bits", "w_bit", "group_size", "q_group_size", "sym", "desc_act", "checkpoint_format", "format", "version"}
)


def _int_setting(settings: dict, keys: tuple[str, ...], source: str, default: int | None = None) -> int:
    for key in keys:
        if settings.get(key) is not None:
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise ExportError(f"{source}: {key}={value!r} is not an integer; fix the quantization config.")
            return int(value)
    if default is None:
        raise ExportError(f"{source}: the quantization config has no {keys[0]!r}; add it (e.g. \"{keys[0]}\": 4).")
    return default


def _check_bits(bits: int, source: str, method: str, allowed: tuple[int, ...]) -> None:
    if bits not in allowed:
        raise ExportError(
            f"{source}: {method.upper()} bits={bits} is not supported: optimum-wc keeps "
            f"{' and '.join(f'{b}-bit' for b in allowed)} {method.upper()} weights exactly "
            "(the CPU plugin's fused weight-decompression pattern takes u4/i4/u8/i8 codes). "
            "Use a 4-bit checkpoint, or export the float model "
            "and compress it with WeightCompressionConfig."
        )


def _check_group_size(group_size: int, source: str) -> None:
    if group_size != -1 and group_size <= 0:
        raise ExportError(
            f"{source}: group_size={group_size} is invalid; it must be -1 or a positive number of input channels."
        )


def _gptq_format(settings: dict, source: str) -> PrequantizedFormat:
    bits = _int_setting(settings, ("bits",), source)
    _check_bits(bits, source, "gptq", (4, 8))
    group_size = _int_setting(settings, ("group_size",), source, default=128)
    _check_group_size(group_size, source)
    fmt = str(settings.get("checkpoint_format") or settings.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ExportError(
            f"{source}: GPTQ checkpoint_format={fmt!r} is not supported; optimum-wc reads the 'gptq' (v1) and "
            "'gptq_v2' layouts. Re-save the model in one of them (GPTQModel: format='gptq')."
        )
    pack_dtype = str(settings.get("pack_dtype") or "int32").replace("torch.", "")
    if pack_dtype != "int32":
        raise ExportError(
            f"{source}: GPTQ pack_dtype={pack_dtype!r} is not supported; re-save the model with int32 packing."
        )
    if settings.get("dynamic"):
        raise ExportError(
            f"{source}: GPTQ per-module overrides ('dynamic') are not supported; every quantized layer must use the "
            "config's bits and group_size. Re-quantize without 'dynamic'."
        )
    return PrequantizedFormat(
        method="gptq", bits=bits, group_size=group_size, sym=bool(settings.get("sym", True)),
        desc_act=bool(settings.get("desc_act", False)), checkpoint_format=fmt, source=source,
    )


def _awq_format(settings: dict, source: str) -> PrequantizedFormat:
    bits = _int_setting(settings, ("bits", "w_bit"), source)
    _check_bits(bits, source, "awq", (4,))
    group_size = _int_setting(settings, ("group_size", "q_group_size"), source, default=128)
    _check_group_size(group_size, source)
    version = str(settings.get("version") or "gemm").lower()
    if version != "gemm":
        raise ExportError(
            f"{source}: AWQ version={version!r} is not supported; optimum-wc reads the GEMM layout. "
            "Re-save the model with version='gemm'."
        )
    if not settings.get("zero_point", True):
        raise ExportError(
            f"{source}: AWQ zero_point=false is not supported; optimum-wc reads AWQ GEMM with zero points."
        )
    return PrequantizedFormat(
        method="awq", bits=bits, group_size=group_size, sym=False, desc_act=False,
        checkpoint_format="awq_gemm", source=source,
    )
