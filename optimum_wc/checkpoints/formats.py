"""Which pre-quantized format a checkpoint folder holds, read from its config files alone.

A checkpoint whose ``config.json`` (or a ``quantize_config.json`` beside the
weights, as AutoGPTQ and GPTQModel write it) says ``quant_method`` ``"gptq"``,
``"awq"`` or ``"compressed-tensors"`` (llm-compressor) holds integer codes,
scales and zero points for its linear layers.  :func:`detect_prequantized`
returns their :class:`PrequantizedFormat` or None, and refuses, with the
fix, a variant that cannot be kept exactly.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .bitsandbytes import bitsandbytes_format
from .ct_config import compressed_tensors_format
from .mxfp4 import mxfp4_format
from .settings import CT_FORMATS, LayerGroup, LayerOverride, PrequantizedFormat  # noqa: F401 - re-exported

SIDECAR = "quantize_config.json"


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
    if method == "compressed-tensors":
        return compressed_tensors_format(from_config or {}, str(config_file))
    if method in ("auto-round", "autoround", "intel/auto-round"):
        return _auto_round_format(from_config or sidecar or {}, str(config_file if from_config else sidecar_file))
    if method == "bitsandbytes":
        return bitsandbytes_format(from_config or {}, str(config_file))
    if method == "mxfp4":
        return mxfp4_format(from_config or {}, str(config_file))
    if method not in ("gptq", "awq"):
        return None  # fp8, hqq, ...: not handled here
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
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
                raise ExportError(f"{source}: {key}={value!r} is not an integer; fix the quantization config.")
            return int(value)
    if default is None:
        raise ExportError(f"{source}: the quantization config has no {keys[0]!r}; add it (e.g. \"{keys[0]}\": 4).")
    return default


def _check_bits(bits: int, source: str, method: str, allowed: tuple[int, ...]) -> None:
    if bits not in allowed:
        raise ExportError(
            f"{source}: {method.upper()} bits={bits} is not supported: optimum-wc keeps "
            f"{', '.join(f'{b}-bit' for b in allowed)} {method.upper()} weights exactly "
            "(in the u4/i4/u8/i8 constants of the CPU plugin's fused weight-decompression pattern). "
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
    _check_bits(bits, source, "gptq", (2, 3, 4, 8))
    group_size = _int_setting(settings, ("group_size",), source, default=128)
    _check_group_size(group_size, source)
    fmt = str(settings.get("checkpoint_format") or settings.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2", "marlin"):
        raise ExportError(
            f"{source}: GPTQ checkpoint_format={fmt!r} is not supported; optimum-wc reads the 'gptq' (v1), "
            "'gptq_v2' and 'marlin' layouts. Re-save the model in one of them (GPTQModel: format='gptq')."
        )
    if fmt == "marlin":
        _check_marlin(bits, group_size, bool(settings.get("sym", True)), bool(settings.get("desc_act")), source)
    pack_dtype = str(settings.get("pack_dtype") or "int32").replace("torch.", "")
    if pack_dtype != "int32":
        raise ExportError(
            f"{source}: GPTQ pack_dtype={pack_dtype!r} is not supported; re-save the model with int32 packing."
        )
    quantizer = (settings.get("meta") or {}).get("quantizer") if isinstance(settings.get("meta"), dict) else None
    by_gptqmodel = any(str(q).startswith("gptqmodel") for q in (quantizer if isinstance(quantizer, list) else []))
    return PrequantizedFormat(
        method="gptq", bits=bits, group_size=group_size, sym=bool(settings.get("sym", True)),
        desc_act=bool(settings.get("desc_act", False)), checkpoint_format=fmt, source=source,
        overrides=_gptqmodel_dynamic(settings.get("dynamic"), source), producer="gptqmodel" if by_gptqmodel else "",
    )


def _check_marlin(bits: int, group_size: int, sym: bool, desc_act: bool, source: str) -> None:
    """Marlin holds symmetric 4-bit weights, in natural channel order, per channel or in groups of 128."""
    if bits != 4 or not sym or desc_act or group_size not in (-1, 128):
        raise ExportError(
            f"{source}: a Marlin checkpoint must be 4-bit, symmetric, without act-order and with group_size 128 or -1 "
            f"(got bits={bits}, sym={sym}, desc_act={desc_act}, group_size={group_size}); fix the quantization config."
        )


def _override(pattern: str, regex: bool, skip: bool, settings: Any, source: str, allowed_bits) -> LayerOverride:
    if not isinstance(settings, dict):
        raise ExportError(f"{source}: the override for {pattern!r} is not a JSON object; fix the quantization config.")
    bits = settings.get("bits")
    if bits is not None and not skip:
        bits = _int_setting(settings, ("bits",), f"{source} (override {pattern!r})")
        _check_bits(bits, source, "gptq", allowed_bits)
    group_size = settings.get("group_size")
    if group_size is not None:
        group_size = _int_setting(settings, ("group_size",), f"{source} (override {pattern!r})")
        _check_group_size(group_size, source)
    if regex:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ExportError(f"{source}: override pattern {pattern!r} is not a regular expression ({exc}).") from exc
    sym = settings.get("sym")
    return LayerOverride(pattern, regex, skip, bits, group_size, None if sym is None else bool(sym))


def _gptqmodel_dynamic(dynamic: Any, source: str) -> tuple[LayerOverride, ...]:
    """GPTQModel's ``dynamic``: ``"-:regex"`` leaves matching modules float, ``"+:regex"`` (or a bare regex) sets
    their bits / group_size / sym; the first matching rule wins."""
    if not dynamic:
        return ()
    if not isinstance(dynamic, dict):
        raise ExportError(f"{source}: GPTQ 'dynamic' must be a JSON object of regex -> settings; fix the config.")
    rules = []
    for key, settings in dynamic.items():
        skip = key.startswith("-:")
        pattern = key[2:] if key.startswith(("-:", "+:")) else key
        rules.append(_override(pattern, True, skip, settings or {}, source, (2, 3, 4, 8)))
    return tuple(rules)


def _auto_round_format(settings: dict, source: str) -> PrequantizedFormat:
    """Intel AutoRound: a GPTQ (v1 ``auto_round:auto_gptq``, zero points as they are for ``auto_round`` /
    ``auto_round:gptqmodel``) or AWQ (``auto_round:auto_awq``) layout, with per-layer ``extra_config``."""
    data_type = str(settings.get("data_type") or "int")
    if data_type != "int":
        raise ExportError(
            f"{source}: AutoRound data_type={data_type!r} is not supported; optimum-wc keeps AutoRound integer "
            "weights exactly. Export the float model and compress it with WeightCompressionConfig."
        )
    act_bits = settings.get("act_bits", 16)
    if isinstance(act_bits, (int, float)) and act_bits < 16:
        raise ExportError(
            f"{source}: AutoRound act_bits={act_bits} quantizes activations, which optimum-wc does not reproduce; "
            "use a weight-only AutoRound checkpoint (act_bits=16)."
        )
    packing = str(settings.get("packing_format") or settings.get("backend") or "auto_round:auto_gptq").lower()
    if "awq" in packing:
        fmt = _awq_format({**settings, "version": "gemm", "zero_point": True}, source)
    elif "gptq" in packing or packing == "auto_round":
        v1 = "gptq" in packing and "gptqmodel" not in packing
        fmt = _gptq_format({**settings, "checkpoint_format": "gptq" if v1 else "gptq_v2", "dynamic": None}, source)
    else:
        raise ExportError(
            f"{source}: AutoRound packing_format={packing!r} is not supported; optimum-wc reads "
            "'auto_round:auto_gptq', 'auto_round', 'auto_round:gptqmodel' and 'auto_round:auto_awq'."
        )
    extra = settings.get("extra_config") or {}
    if not isinstance(extra, dict):
        raise ExportError(f"{source}: AutoRound extra_config must be a JSON object; fix the config.")
    names = [k for k in extra if not set(k) & set("*^$[]()+?\\|")]
    regexes = [k for k in extra if k not in names]
    overrides = []
    for k in names + regexes:
        settings_k = {} if extra[k] is None else extra[k]
        if not isinstance(settings_k, dict):  # (_override says so too, but the bits are read first)
            raise ExportError(f"{source}: AutoRound extra_config[{k!r}] is not a JSON object of settings; fix the "
                              "config.")
        bits = _int_setting(settings_k, ("bits",), f"{source} (extra_config {k!r})", default=0)
        overrides.append(_override(k, k in regexes, bits >= 16, settings_k, source, (2, 3, 4, 8)))
    return replace(fmt, overrides=tuple(overrides), producer="auto-round")


def _awq_format(settings: dict, source: str) -> PrequantizedFormat:
    bits = _int_setting(settings, ("bits", "w_bit"), source)
    _check_bits(bits, source, "awq", (4,))
    group_size = _int_setting(settings, ("group_size", "q_group_size"), source, default=128)
    _check_group_size(group_size, source)
    version = str(settings.get("version") or "gemm").lower()
    if version not in ("gemm", "gemv", "marlin"):
        raise ExportError(
            f"{source}: AWQ version={version!r} is not supported; optimum-wc reads the GEMM, GEMV and Marlin "
            "layouts. Re-save the model with version='gemm'."
        )
    zero_point = bool(settings.get("zero_point", True))
    if version == "marlin":  # AutoAWQ's WQLinear_Marlin: symmetric, no qzeros
        _check_marlin(bits, group_size, not zero_point, False, source)
        return PrequantizedFormat(method="awq", bits=4, group_size=group_size, sym=True, desc_act=False,
                                  checkpoint_format="awq_marlin", source=source)
    if version == "gemv" and group_size not in (32, 64) and group_size < 128:
        raise ExportError(f"{source}: AWQ GEMV with group_size={group_size} does not exist (AutoAWQ writes 32, 64 "
                          "or >= 128); fix group_size in the quantization config.")
    # zero_point false (GPTQModel's symmetric AWQ): the qzeros are still stored, all 8, and read as they are
    return PrequantizedFormat(
        method="awq", bits=bits, group_size=group_size, sym=not zero_point, desc_act=False,
        checkpoint_format=f"awq_{version}", source=source,
    )
