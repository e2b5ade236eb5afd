"""Pre-quantized GPTQ / AWQ checkpoints: export them keeping their integer weights exactly.

A checkpoint whose ``config.json`` (or a ``quantize_config.json`` beside the
weights) says ``quant_method`` ``"gptq"`` or ``"awq"`` already holds integer
codes, scales and zero points for its linear layers.  We read those packed
tensors with NumPy (no ``auto_gptq``, ``gptqmodel``, ``awq`` or GPU) and put
them into the IR as they are, as the decompression pattern our engine writes::

    Constant(u4 | i4 | u8 | i8) -> Convert(f16) [-> Subtract(zero point)] -> Multiply(f16 scale)
        -> Reshape -> MatMul

so the OpenVINO model computes what the quantized model computes.

Packed layouts read here (one linear layer ``y = x W^T``, ``W`` of shape
``[out, in]``, ``b`` bits, ``p = 32 / b`` values per int32, ``G`` groups):

* GPTQ ``qweight`` int32 ``[in / p, out]``: packed along the *input* axis,
  input channel ``i = r * p + k`` of row ``r`` sits at bits ``[b k, b k + b)``
  (low bits first).
* GPTQ ``qzeros`` int32 ``[G, out / p]``: packed along the *output* axis the
  same way.  Checkpoint format ``"gptq"`` (v1, AutoGPTQ and GPTQModel's
  default) stores ``zero_point - 1`` (masked to ``b`` bits); ``"gptq_v2"``
  stores the zero point itself.
* GPTQ ``scales`` float16 ``[G, out]``; ``g_idx`` int32 ``[in]``, the group of
  each input channel (not contiguous with ``desc_act``).
* AWQ (GEMM) ``qweight`` int32 ``[in, out / 8]`` and ``qzeros`` int32
  ``[G, out / 8]``: packed along the *output* axis, nibble ``k`` of column
  ``c`` holding output channel ``8 c + [0, 2, 4, 6, 1, 3, 5, 7][k]``; zero
  points without offset; ``scales`` float16 ``[G, out]``; groups contiguous.

Dequantized weight: ``W[o, i] = scales[g(i), o] * (q[i, o] - z[g(i), o])``.

When the groups are not contiguous along the input axis (GPTQ ``desc_act``),
the input channels of the weight are reordered so that each group is
contiguous, and a ``Gather`` on the activation's channel axis reorders the
activation to match (``x W^T == x[..., P] (W[:, P])^T`` for any permutation
``P``): exact, never requantized.

Export (:func:`export_prequantized_ir`): a staging copy of the checkpoint with
the ``quantization_config`` stripped and without the quantized tensors is
exported by optimum-intel (as any float checkpoint), the model being built
with placeholder weights for the quantized layers, views of one small shared
buffer (so their float weights are never materialised), then each quantized
linear's weight Constant (friendly name ``self.<prefix>.weight``) is replaced
by the integer subgraph built from the packed tensors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .config import CompressWeightsMode
from .errors import ExportError, ModelError
from .lowering import CompressedWeight, dequantize

logger = logging.getLogger("optimum_wc")

__all__ = [
    "PrequantizedFormat",
    "PrequantizedCheckpoint",
    "QuantizedLinear",
    "LayerWeights",
    "detect_prequantized",
    "unpack_along_rows",
    "unpack_along_columns",
    "unpack_awq",
    "convert_gptq_layer",
    "convert_awq_layer",
    "apply_prequantized",
    "stage_float_checkpoint",
    "export_prequantized_ir",
]

QUANT_TENSORS = ("qweight", "qzeros", "scales", "g_idx")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of a packed AWQ int32 holds output channel 8c + AWQ_ORDER[k]
AWQ_REVERSE_ORDER = tuple(int(i) for i in np.argsort(AWQ_ORDER))  # (0, 4, 1, 5, 2, 6, 3, 7)
RT_INFO_KEY = ("optimum_wc", "prequantized")
INDEX_FILE = "model.safetensors.index.json"
# Small staging shards keep the write buffer small (measured: 512 MiB shards left ~90 MiB more peak memory).
_STAGED_SHARD_BYTES = 64 * 2**20
_SIDECAR = "quantize_config.json"
_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


# --------------------------------------------------------------------------- format detection


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


def _read_json(path: Path) -> dict:
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
    config_file, sidecar_file = path / "config.json", path / _SIDECAR
    from_config = None
    if config_file.is_file():
        try:
            from_config = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config")
        except (OSError, ValueError, AttributeError):
            return None  # check_model_source reports a broken config.json
    sidecar = _read_json(sidecar_file) if sidecar_file.is_file() else None
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
                    f"{path}: {key}={merged[key]!r} in {_SIDECAR} but {key}={value!r} in config.json's "
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


# --------------------------------------------------------------------------- unpacking (pure NumPy)


def _check_pack_bits(bits: int) -> int:
    if bits not in (2, 4, 8):
        raise ValueError(f"cannot unpack {bits}-bit values from int32 (need 2, 4 or 8 bits)")
    return 32 // bits


def unpack_along_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack int32 ``[n / p, m]`` into uint8 ``[n, m]`` (``p = 32 / bits``; GPTQ ``qweight``).

    Row ``i = r * p + k`` of the result is bits ``[bits k, bits k + bits)`` of
    packed row ``r`` (low bits first).
    """
    per_word = _check_pack_bits(bits)
    words = np.ascontiguousarray(packed).view(np.uint32)
    out = np.empty((words.shape[0] * per_word, words.shape[1]), dtype=np.uint8)
    mask = np.uint32(2**bits - 1)
    for k in range(per_word):
        out[k::per_word] = (words >> np.uint32(bits * k)) & mask
    return out


def unpack_along_columns(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack int32 ``[n, m / p]`` into uint8 ``[n, m]`` (``p = 32 / bits``; GPTQ ``qzeros``).

    Column ``j = c * p + k`` of the result is bits ``[bits k, bits k + bits)``
    of packed column ``c`` (low bits first).
    """
    per_word = _check_pack_bits(bits)
    words = np.ascontiguousarray(packed).view(np.uint32)
    out = np.empty((words.shape[0], words.shape[1] * per_word), dtype=np.uint8)
    mask = np.uint32(2**bits - 1)
    for k in range(per_word):
        out[:, k::per_word] = (words >> np.uint32(bits * k)) & mask
    return out


def unpack_awq(packed: np.ndarray) -> np.ndarray:
    """Unpack AWQ GEMM int32 ``[n, m / 8]`` into uint8 ``[n, m]`` (``qweight`` and ``qzeros``).

    Nibble ``k`` (bits ``[4k, 4k + 4)``) of packed column ``c`` holds column
    ``8 c + AWQ_ORDER[k]`` with ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``.
    """
    natural = unpack_along_columns(packed, 4)  # column 8c + k holds nibble k
    n, m = natural.shape
    return np.ascontiguousarray(natural.reshape(n, m // 8, 8)[:, :, list(AWQ_REVERSE_ORDER)].reshape(n, m))


# --------------------------------------------------------------------------- one layer -> CompressedWeight


@dataclass
class LayerWeights:
    """The exact integer form of one quantized linear layer.

    ``compressed`` is in our grouped layout (``codes [out, G, g]``, ``scale``
    and ``zero_point`` ``[out, G, 1]``; per channel ``[out, in]`` / ``[out, 1]``)
    over the input channels taken in ``permutation`` order (None: natural
    order), i.e. it represents ``W[:, permutation]``.
    """

    compressed: CompressedWeight
    permutation: np.ndarray | None
    note: str = ""

    def dequantized(self) -> np.ndarray:
        """``W`` as float32 ``[out, in]``, in the checkpoint's input-channel order."""
        w = dequantize(self.compressed)
        if self.permutation is None:
            return w
        out = np.empty_like(w)
        out[:, self.permutation] = w
        return out


def _as_f16_scales(scales: np.ndarray, name: str) -> np.ndarray:
    if scales.dtype == np.float16:
        return scales
    as_f16 = scales.astype(np.float16)
    if not np.array_equal(as_f16.astype(np.float32), scales.astype(np.float32)):
        raise ExportError(
            f"{name} holds {scales.dtype} values that float16 cannot represent exactly; the IR stores scales in "
            "float16, so these weights cannot be kept exactly. Re-save the checkpoint with float16 scales."
        )
    return as_f16


def _group_order(
    g_idx: np.ndarray | None, name: str, in_features: int, n_groups: int, group_size: int
) -> np.ndarray | None:
    """The input-channel permutation that makes groups contiguous, or None if they already are."""
    natural = np.arange(in_features, dtype=np.int64) // (in_features if group_size == -1 else group_size)
    if g_idx is None:
        return None
    g = g_idx.astype(np.int64).reshape(-1)
    bad = np.flatnonzero((g < 0) | (g >= n_groups))
    if bad.size:
        i = int(bad[0])
        raise ExportError(
            f"{name} maps input channel {i} to group {int(g[i])}, outside [0, {n_groups}) "
            f"({bad.size} channel(s) out of range; the layer has {n_groups} group(s) of scales). The checkpoint is "
            "corrupt or its group_size is wrong: re-save it, or fix group_size in the quantization config."
        )
    if np.array_equal(g, natural):
        return None
    counts = np.bincount(g, minlength=n_groups)
    size = in_features // n_groups
    if not np.all(counts == size):
        k = int(np.flatnonzero(counts != size)[0])
        raise ExportError(
            f"{name} puts {int(counts[k])} input channels in group {k}, but every group must hold {size} "
            "(in_features / groups) to be stored exactly; the checkpoint's g_idx is not a GPTQ act-order grouping. "
            "Re-quantize the model, or export it from float."
        )
    return np.argsort(g, kind="stable")


def _build_weight(
    codes_in_out: np.ndarray,
    zeros: np.ndarray,
    scales: np.ndarray,
    permutation: np.ndarray | None,
    bits: int,
    group_size: int,
    sym: bool,
    names: dict[str, str],
) -> tuple[CompressedWeight, str]:
    """Codes ``[in, out]`` (uint8), real zero points ``[G, out]`` (int), scales ``[G, out]`` -> CompressedWeight."""
    n_in, n_out = codes_in_out.shape
    n_groups = zeros.shape[0]
    if permutation is not None:
        codes_in_out = codes_in_out[permutation]
    codes = np.ascontiguousarray(codes_in_out.T)  # [out, in]
    scale = np.ascontiguousarray(scales.T.astype(np.float32))  # [out, G]
    zp = np.ascontiguousarray(zeros.T)  # [out, G]
    if group_size != -1:
        codes = codes.reshape(n_out, n_groups, n_in // n_groups)
        scale, zp = scale[:, :, None], zp[:, :, None]
    high = 2**bits - 1
    mid = 2 ** (bits - 1)
    note = ""
    if sym and np.all(zp == mid):
        signed = (codes.astype(np.int16) - mid).astype(np.int8)
        mode = CompressWeightsMode.INT4_SYM if bits == 4 else CompressWeightsMode.INT8_SYM
        return CompressedWeight(signed, scale, None, mode, group_size, (n_out, n_in)), note
    if sym:
        note = f"sym=true but {names['qzeros']} holds zero points other than {mid}: kept with its zero points"
    if int(zp.max(initial=0)) > high:
        if bits == 8:
            raise ExportError(
                f"{names['qzeros']} gives a zero point of {int(zp.max())}, above 255 "
                "(a stored 255 in GPTQ v1 means 256), "
                "which no 8-bit zero point can hold. The checkpoint was written with an overflowing zero point: "
                "re-quantize it, or save it as checkpoint_format='gptq_v2'."
            )
        note = (f"{names['qzeros']} gives zero point {int(zp.max())} (a stored 15 in GPTQ v1 means 16), above 15: "
                "the layer is kept exactly with 8-bit codes")
        mode = CompressWeightsMode.INT8_ASYM
        cw = CompressedWeight(codes, scale, zp.astype(np.uint8), mode, group_size, (n_out, n_in))
        return cw, note
    mode = CompressWeightsMode.INT4_ASYM if bits == 4 else CompressWeightsMode.INT8_ASYM
    return CompressedWeight(codes, scale, zp.astype(np.uint8), mode, group_size, (n_out, n_in)), note


def _groups(in_features: int, group_size: int, name: str) -> int:
    if group_size == -1:
        return 1
    if in_features % group_size:
        raise ExportError(
            f"{name}: the layer has {in_features} input channels, which group_size={group_size} does not divide; "
            "optimum-wc keeps only whole groups exactly. Use a checkpoint whose group size divides every layer."
        )
    return in_features // group_size


def convert_gptq_layer(
    prefix: str,
    fmt: PrequantizedFormat,
    qweight: np.ndarray,
    qzeros: np.ndarray,
    scales: np.ndarray,
    g_idx: np.ndarray | None,
    in_features: int,
    out_features: int,
) -> LayerWeights:
    """One GPTQ linear (tensors ``<prefix>.qweight/qzeros/scales/g_idx``) in exact integer form."""
    names = {t: f"{prefix}.{t}" for t in QUANT_TENSORS}
    n_groups = _groups(in_features, fmt.group_size, names["qweight"])
    codes = unpack_along_rows(qweight, fmt.bits)  # [in, out]
    stored = unpack_along_columns(qzeros, fmt.bits)  # [G, out]
    # v1: real zero point = stored value + 1, as AutoGPTQ's kernels compute it (may reach 2^bits)
    zeros = stored.astype(np.int32) + fmt.zero_point_offset
    permutation = _group_order(g_idx, names["g_idx"], in_features, n_groups, fmt.group_size)
    cw, note = _build_weight(codes, zeros, _as_f16_scales(scales, names["scales"]), permutation,
                             fmt.bits, fmt.group_size, fmt.sym, names)
    return LayerWeights(cw, permutation, note)


def convert_awq_layer(
    prefix: str,
    fmt: PrequantizedFormat,
    qweight: np.ndarray,
    qzeros: np.ndarray,
    scales: np.ndarray,
    in_features: int,
    out_features: int,
) -> LayerWeights:
    """One AWQ GEMM linear (tensors ``<prefix>.qweight/qzeros/scales``) in exact integer form."""
    names = {t: f"{prefix}.{t}" for t in QUANT_TENSORS}
    _groups(in_features, fmt.group_size, names["qweight"])
    codes = unpack_awq(qweight)  # [in, out]
    zeros = unpack_awq(qzeros).astype(np.int32)  # [G, out]
    scales = _as_f16_scales(scales, names["scales"])
    cw, note = _build_weight(codes, zeros, scales, None, 4, fmt.group_size, False, names)
    return LayerWeights(cw, None, note)


# --------------------------------------------------------------------------- the checkpoint


@dataclass
class QuantizedLinear:
    """One quantized linear layer of the checkpoint: ``<prefix>.qweight`` etc., weight ``[out, in]``."""

    prefix: str  # e.g. model.layers.0.self_attn.q_proj
    in_features: int
    out_features: int
    tensors: dict[str, str]  # kind ("qweight", ...) -> tensor name present in the checkpoint

    @property
    def weight_name(self) -> str:
        return f"{self.prefix}.weight"


@dataclass
class _TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string: "I32", "F16", ...


def _weight_files(path: Path, sidecar: dict | None) -> list[Path]:
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ExportError(f"{index} has no weight_map; fix the index or re-save the checkpoint.")
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ExportError(
                f"{index} lists {', '.join(missing)}, which is not in {path}; download the missing shard(s)."
            )
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    base = (sidecar or {}).get("model_file_base_name")
    if base and (path / f"{base}.safetensors").is_file():
        return [path / f"{base}.safetensors"]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise ExportError(
            f"{path} holds its quantized weights as pickled .bin/.pt files; optimum-wc reads safetensors only. "
            "Re-save the checkpoint with safetensors (save_pretrained(..., safe_serialization=True))."
        )
    raise ExportError(f"{path} has no .safetensors weight file; pass the folder that holds the quantized weights.")


def _expected_linear_shapes(path: Path, trust_remote_code: bool) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model the config describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ExportError(
            f"cannot build the model described by {path / 'config.json'} to check the quantized tensors' "
            f"shapes: {exc}. "
            "Check the config (or pass trust_remote_code=True for custom code)."
        ) from exc
    return {name: tuple(int(d) for d in p.shape) for name, p in model.state_dict(keep_vars=True).items()}


class PrequantizedCheckpoint:
    """The quantized linear layers of a GPTQ/AWQ checkpoint folder, read lazily.

    Building it reads only the safetensors headers and checks every quantized
    layer's tensors (presence, dtypes, shapes against the config); the values
    are read one layer at a time by :meth:`layer_weights`.
    """

    def __init__(
        self, model_dir: str | os.PathLike, fmt: PrequantizedFormat | None = None, *, trust_remote_code: bool = False
    ):
        self.path = Path(str(model_dir))
        found = fmt or detect_prequantized(self.path)
        if found is None:
            raise ExportError(
                f"{self.path} is not a GPTQ/AWQ checkpoint (no quant_method 'gptq' or 'awq' in its config)."
            )
        self.fmt: PrequantizedFormat = found
        sidecar_file = self.path / _SIDECAR
        self.files = _weight_files(self.path, _read_json(sidecar_file) if sidecar_file.is_file() else None)
        self.tensors: dict[str, _TensorInfo] = {}
        self._read_headers()
        self.expected = _expected_linear_shapes(self.path, trust_remote_code)
        self.layers: list[QuantizedLinear] = self._find_layers()
        if not self.layers:
            raise ExportError(
                f"{self.path}: the config says {self.fmt.method.upper()} but no tensor ends in .qweight; "
                "the weights are "
                f"not quantized. Remove quantization_config from config.json to export it as a float model."
            )

    def _read_headers(self) -> None:
        from safetensors import safe_open

        for file in self.files:
            try:
                with safe_open(file, framework="np") as f:
                    for name in f.keys():
                        s = f.get_slice(name)
                        self.tensors[name] = _TensorInfo(file, tuple(int(d) for d in s.get_shape()), str(s.get_dtype()))
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise ExportError(
                    f"cannot read {file}: {exc}; the file is damaged or not safetensors: re-download it."
                ) from exc

    def _find_layers(self) -> list[QuantizedLinear]:
        kinds = QUANT_TENSORS if self.fmt.method == "gptq" else QUANT_TENSORS[:3]
        prefixes: dict[str, dict[str, str]] = {}
        for name in self.tensors:
            prefix, _, kind = name.rpartition(".")
            if kind in kinds and prefix:
                prefixes.setdefault(prefix, {})[kind] = name
        order = {name: i for i, name in enumerate(self.expected)}
        ordered = sorted(prefixes, key=lambda prefix: (order.get(f"{prefix}.weight", len(order)), prefix))
        return [self._check_layer(prefix, prefixes[prefix]) for prefix in ordered]  # model order: first bad layer first

    def _check_layer(self, prefix: str, found: dict[str, str]) -> QuantizedLinear:
        fmt, method = self.fmt, self.fmt.method.upper()
        required = ("qweight", "qzeros", "scales") + (("g_idx",) if fmt.method == "gptq" and fmt.desc_act else ())
        for kind in required:
            if kind not in found:
                present = ", ".join(sorted(found.values()))
                raise ExportError(
                    f"{prefix}.{kind} is missing from the checkpoint ({present} are there): "
                    f"a {method} linear layer needs "
                    f"{', '.join(required)}. The checkpoint is incomplete: re-download or re-save it."
                )
        weight_name = f"{prefix}.weight"
        if weight_name in self.tensors:
            raise ExportError(
                f"{weight_name} and {prefix}.qweight are both in the checkpoint: "
                "the layer is both float and quantized. "
                "Remove one of them (re-save the checkpoint)."
            )
        if weight_name not in self.expected:
            raise ExportError(
                f"{prefix}.qweight belongs to no linear layer of the model described by config.json "
                "(it has no parameter "
                f"{weight_name}). The weights do not match the config: use the config.json saved with these weights."
            )
        expected = self.expected[weight_name]
        if len(expected) != 2:
            raise ExportError(
                f"{prefix}.qweight: {weight_name} has shape {list(expected)} in the model, "
                "not a linear layer's [out, in]."
            )
        n_out, n_in = expected
        bits, per_word = fmt.bits, 32 // fmt.bits
        n_groups = _groups(n_in, fmt.group_size, f"{prefix}.qweight")
        if fmt.method == "gptq":
            shapes = {"qweight": (n_in // per_word, n_out), "qzeros": (n_groups, n_out // per_word),
                      "scales": (n_groups, n_out), "g_idx": (n_in,)}
            layout = {"qweight": "[in * bits / 32, out]", "qzeros": "[groups, out * bits / 32]",
                      "scales": "[groups, out]", "g_idx": "[in]"}
        else:
            shapes = {"qweight": (n_in, n_out // 8), "qzeros": (n_groups, n_out // 8), "scales": (n_groups, n_out)}
            layout = {"qweight": "[in, out / 8]", "qzeros": "[groups, out / 8]", "scales": "[groups, out]"}
        dtypes = {"qweight": ("I32", "U32"), "qzeros": ("I32", "U32"),
                  "scales": ("F16", "BF16", "F32"), "g_idx": ("I32", "I64")}
        for kind, name in found.items():
            info = self.tensors[name]
            if info.dtype not in dtypes[kind]:
                raise ExportError(
                    f"{name} is {info.dtype}, but a {method} {kind} must be {' or '.join(dtypes[kind])}; "
                    "the checkpoint uses a packing optimum-wc does not read. Re-save it in the standard format."
                )
            if info.shape != shapes[kind]:
                raise ExportError(
                    f"{name} has shape {list(info.shape)}, but config.json makes {weight_name} [{n_out}, {n_in}], so a "
                    f"{bits}-bit {method} {kind} with group_size={fmt.group_size} must be {list(shapes[kind])} "
                    f"({layout[kind]}). The weights and the config disagree: use the config saved with these weights "
                    "(check bits, group_size and the layer sizes)."
                )
        return QuantizedLinear(prefix, n_in, n_out, dict(found))

    # -- reading

    def read(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array (bfloat16 comes back as float32)."""
        from safetensors import safe_open

        info = self.tensors[name]
        if info.dtype == "BF16":
            with safe_open(info.file, framework="pt") as f:
                return f.get_tensor(name).float().numpy()
        with safe_open(info.file, framework="np") as f:
            return f.get_tensor(name)

    def layer_weights(self, layer: QuantizedLinear) -> LayerWeights:
        """Unpack, check and convert one layer (raises :class:`ExportError` naming the tensor on bad values)."""
        t = {kind: self.read(name) for kind, name in layer.tensors.items()}
        if self.fmt.method == "gptq":
            lw = convert_gptq_layer(layer.prefix, self.fmt, t["qweight"], t["qzeros"], t["scales"], t.get("g_idx"),
                                    layer.in_features, layer.out_features)
        else:
            lw = convert_awq_layer(layer.prefix, self.fmt, t["qweight"], t["qzeros"], t["scales"],
                                   layer.in_features, layer.out_features)
        if lw.note:
            logger.info("%s: %s.", layer.prefix, lw.note)
        return lw

    def float_dtype(self) -> str:
        """The checkpoint's float dtype (config ``dtype``/``torch_dtype``; float16 when unset)."""
        config = _read_json(self.path / "config.json") if (self.path / "config.json").is_file() else {}
        value = str(config.get("dtype") or config.get("torch_dtype") or "float16").replace("torch.", "")
        return _DTYPES.get(value, "float16")

    def quantized_tensor_names(self) -> set[str]:
        return {name for layer in self.layers for name in layer.tensors.values()}


# --------------------------------------------------------------------------- staging a float checkpoint


def _staged_config(source: Path) -> dict:
    config = _read_json(source / "config.json")
    config.pop("quantization_config", None)
    return config


def stage_float_checkpoint(ckpt: PrequantizedCheckpoint, dest: Path, *, shard_bytes: int = _STAGED_SHARD_BYTES,
                           dequantized_layers: bool = True) -> None:
    """Write a float Transformers checkpoint of ``ckpt`` into ``dest`` for the exporter.

    ``config.json`` loses its ``quantization_config``; every non-quantized
    tensor and file is copied; with ``dequantized_layers`` the quantized
    linears get float ``<prefix>.weight`` tensors (dequantized, in the
    checkpoint's float dtype), else they are left out (the exporter then gets
    placeholders, see :func:`_placeholder_loading`).  Either way they are
    replaced by the exact integer weights after export.  Tensors are written in
    shards of at most ``shard_bytes`` so that only one shard is in memory at a
    time.  Every quantized layer is unpacked and checked here, before the
    export starts.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    skip = {INDEX_FILE, _SIDECAR, "config.json", *(f.name for f in ckpt.files)}
    for item in sorted(ckpt.path.iterdir()):
        if item.is_file() and item.name not in skip and not item.name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            shutil.copy2(item, dest / item.name)
    (dest / "config.json").write_text(json.dumps(_staged_config(ckpt.path), indent=2, sort_keys=True))

    weight_map: dict[str, str] = {}
    buffer: dict[str, Any] = {}
    state = {"bytes": 0, "total": 0, "shard": 0}

    def flush() -> None:
        if not buffer:
            return
        state["shard"] += 1
        name = f"model-{state['shard']:05d}.safetensors"
        save_file(buffer, str(dest / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in buffer})
        buffer.clear()
        state["bytes"] = 0

    def add(name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if state["bytes"] and state["bytes"] + size > shard_bytes:
            flush()
        buffer[name] = tensor.contiguous()
        state["bytes"] += size
        state["total"] += size

    quantized = ckpt.quantized_tensor_names()
    for file in ckpt.files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name not in quantized:
                    add(name, f.get_tensor(name))
    dtype = getattr(torch, ckpt.float_dtype())
    for layer in ckpt.layers:
        lw = ckpt.layer_weights(layer)  # unpacks and checks the layer
        if dequantized_layers:
            add(layer.weight_name, torch.from_numpy(lw.dequantized()).to(dtype))
        del lw
    flush()
    index = {"metadata": {"total_size": state["total"]}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / INDEX_FILE).write_text(json.dumps(index, indent=2))


@contextlib.contextmanager
def _placeholder_loading(ckpt: PrequantizedCheckpoint, trust_remote_code: bool) -> Iterator[None]:
    """While active, optimum's exporter gets the model with *placeholder* quantized-linear weights.

    Objective: peak memory of one float copy of the non-quantized parts plus
    the packed weights.  The model is built without allocating parameters
    (``accelerate.init_empty_weights``, buffers such as rotary tables are
    real), the staged float tensors are assigned as they are, and every
    quantized linear's weight is a placeholder view of one shared buffer: the
    traced IR holds a Constant of the right shape for each layer (views of
    one shared buffer), which :func:`apply_prequantized` replaces by the exact
    integer subgraph.  The values of these placeholders never reach the
    final IR.  Patches ``TasksManager.get_model_from_task`` for the duration.
    """
    from optimum.exporters.tasks import TasksManager

    original = TasksManager.get_model_from_task

    def load(task, model_name_or_path, *args, **kwargs):
        return _model_with_placeholders(Path(model_name_or_path), ckpt, trust_remote_code)

    TasksManager.get_model_from_task = staticmethod(load)
    try:
        yield
    finally:
        TasksManager.get_model_from_task = original


def _model_with_placeholders(staged: Path, ckpt: PrequantizedCheckpoint, trust_remote_code: bool):
    """The causal LM of ``staged`` (a :func:`stage_float_checkpoint` without dequantized layers), see above."""
    import torch
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    dtype = getattr(torch, ckpt.float_dtype())
    config = AutoConfig.from_pretrained(staged, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    state: dict[str, Any] = {}
    for file in sorted(staged.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    # Placeholders: overlapping views of one buffer, each starting one element later.  Each layer's constant
    # must stay a distinct node through the exporter (identical constants get merged), so the buffer holds
    # a ramp whose period exceeds the number of layers (no two views are equal); its values are small, and
    # it is only as large as the largest weight.
    sizes = [layer.out_features * layer.in_features for layer in ckpt.layers]
    period = len(sizes) + 1
    ramp = torch.arange(max(sizes) + len(sizes), dtype=torch.float32) % period
    buffer = (ramp * (1e-2 / period)).to(dtype)
    for i, (layer, size) in enumerate(zip(ckpt.layers, sizes)):
        state[layer.weight_name] = buffer[i : i + size].view(layer.out_features, layer.in_features)
    _missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # tied weights: tie_weights below
    del state
    model.tie_weights()
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta or unexpected:
        raise ExportError(
            f"the staged checkpoint does not fit {type(model).__name__}: "
            + (f"no tensor for {', '.join(on_meta[:3])}" if on_meta else f"unknown tensors {', '.join(unexpected[:3])}")
        )
    if (staged / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(staged)
    return model.eval()


# --------------------------------------------------------------------------- the IR


_PATCHED_16BIT_SUFFIX = "._openvino_orig_weight"  # optimum-intel's name for weights of float16/bfloat16 exports


def _torch_name(const_name: str) -> str:
    """``self.model.x.weight`` (or ``self.model.x._openvino_orig_weight``) -> ``model.x.weight``."""
    name = const_name[len("self."):] if const_name.startswith("self.") else const_name
    if name.endswith(_PATCHED_16BIT_SUFFIX):
        name = name[: -len(_PATCHED_16BIT_SUFFIX)] + ".weight"
    return name


def apply_prequantized(ov_model, ckpt: PrequantizedCheckpoint) -> list[dict[str, Any]]:
    """Replace each quantized linear's float weight in ``ov_model`` by its exact integer subgraph, in place.

    The weight Constant of layer ``<prefix>`` is found by its friendly name
    (``self.<prefix>.weight``, or ``self.<prefix>._openvino_orig_weight`` in a
    float16/bfloat16 export, as optimum-intel's exporter names it).  Layers
    whose groups are not contiguous get a Gather on their activation.
    Returns one record per layer, also written to the IR's rt_info
    (``optimum_wc/prequantized``).
    """
    from .graph import find_weight_sites, gather_matmul_inputs, replace_with_compressed

    sites, _ = find_weight_sites(ov_model)
    by_name = {_torch_name(s.name): s for s in sites}
    records = []
    for layer in ckpt.layers:
        site = by_name.get(layer.weight_name)
        if site is None or site.kind != "matmul":
            raise ModelError(
                f"{layer.prefix}.qweight: the exported IR has no float MatMul weight named "
                f"self.{layer.weight_name}, so "
                "its integer weights cannot be put in place. The exporter named or fused the layer differently; "
                "report this architecture to optimum-wc."
            )
        if site.shape != (layer.out_features, layer.in_features) or site.reduction_axis != 1:
            raise ModelError(
                f"{layer.prefix}.qweight: the IR's weight self.{layer.weight_name} has shape {list(site.shape)} "
                f"(input axis {site.reduction_axis}), not [{layer.out_features}, {layer.in_features}] "
                "reduced on axis 1; "
                "report this architecture to optimum-wc."
            )
        lw = ckpt.layer_weights(layer)
        if lw.permutation is not None:
            gather_matmul_inputs(site, lw.permutation)
        replace_with_compressed(site, lw.compressed)
        records.append({
            "name": layer.weight_name,
            "mode": lw.compressed.mode.value,
            "group_size": lw.compressed.group_size,
            "act_order": lw.permutation is not None,
            "shape": [layer.out_features, layer.in_features],
        })
        del lw
    ov_model.set_rt_info(json.dumps({"format": ckpt.fmt.to_dict(), "layers": records}), list(RT_INFO_KEY))
    return records


def read_prequantized_info(ov_model) -> dict | None:
    """The record written by :func:`apply_prequantized`, or None."""
    if not ov_model.has_rt_info(list(RT_INFO_KEY)):
        return None
    return json.loads(ov_model.get_rt_info(list(RT_INFO_KEY)).astype(str))


@contextlib.contextmanager
def _work_dir(output: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=".optimum-wc-prequantized-", dir=output))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_prequantized_ir(
    model_id: str | os.PathLike,
    output: Path,
    fmt: PrequantizedFormat | None = None,
    task: str | None = None,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """Export a GPTQ/AWQ checkpoint folder to ``output`` keeping its integer weights exactly.

    A drop-in for :func:`optimum_wc.export.export_float_ir`: ``output`` gets
    ``openvino_model.xml/.bin`` and the exporter's config/tokenizer files
    (``config.json`` without ``quantization_config``).  Everything else stays
    float (our engine may compress it afterwards).  Returns the per-layer records.
    """
    import time

    import openvino as ov

    from .export import IR_XML, export_float_ir

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ckpt = PrequantizedCheckpoint(model_id, fmt, trust_remote_code=trust_remote_code)
    logger.info("%s: %s checkpoint (%s, %d-bit, group size %d%s%s), %d quantized linear layers.",
                ckpt.path, ckpt.fmt.method.upper(), ckpt.fmt.checkpoint_format, ckpt.fmt.bits, ckpt.fmt.group_size,
                ", sym" if ckpt.fmt.sym else ", asym", ", act-order" if ckpt.fmt.desc_act else "", len(ckpt.layers))
    with _work_dir(output) as work:
        staged, float_dir = work / "checkpoint", work / "float"
        stage_float_checkpoint(ckpt, staged, dequantized_layers=False)
        try:
            with _placeholder_loading(ckpt, trust_remote_code):
                export_float_ir(staged, float_dir, task, trust_remote_code)
        except ExportError as exc:  # an architecture our loader cannot build: the exporter loads dequantized weights
            logger.warning("Exporting with placeholder weights failed (%s); exporting dequantized weights instead "
                           "(peak memory: the whole model in its float dtype).", exc)
            shutil.rmtree(staged, ignore_errors=True)
            shutil.rmtree(float_dir, ignore_errors=True)
            stage_float_checkpoint(ckpt, staged, dequantized_layers=True)
            export_float_ir(staged, float_dir, task, trust_remote_code)
        shutil.rmtree(staged)
        model = ov.Core().read_model(float_dir / IR_XML)
        records = apply_prequantized(model, ckpt)
        ov.save_model(model, output / IR_XML, compress_to_fp16=False)
        del model
        for item in sorted(float_dir.iterdir()):
            if item.is_file() and item.name not in (IR_XML, "openvino_model.bin"):
                shutil.copy2(item, output / item.name)
    logger.info("Kept the %s weights of %d layers exactly in %.1f s.",
                ckpt.fmt.method.upper(), len(records), time.perf_counter() - start)
    return records
