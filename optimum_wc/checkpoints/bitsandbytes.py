"""bitsandbytes checkpoints (4-bit NF4 / FP4, double-quantized or not; LLM.int8) -> their codes (pure NumPy).

Layouts, as transformers' ``save_pretrained`` writes a bitsandbytes model
(bitsandbytes 0.50: ``Params4bit`` with ``QuantState.as_dict(packed=True)``,
``Int8Params``), for one linear ``W [out, in]``:

* 4-bit: ``<p>.weight`` uint8 ``[out * in / 2, 1]``: ``W`` flattened row-major,
  element ``2 i`` in the HIGH nibble of byte ``i``; ``<p>.weight.quant_map``
  float32 ``[16]`` (the code's values); ``<p>.weight.absmax`` float32, one
  per block of ``blocksize`` consecutive elements; ``<p>.weight.quant_state.
  bitsandbytes__nf4`` (or ``__fp4``) uint8: JSON ``{quant_type, blocksize,
  dtype, shape[, nested_blocksize, nested_dtype, nested_offset]}``.
  Double quantization stores ``absmax`` as uint8 codes into
  ``<p>.weight.nested_quant_map`` float32 ``[256]``, scaled per
  ``nested_blocksize`` blocks by ``<p>.weight.nested_absmax`` float32.
  ``W[j] = quant_map[q[j]] * absmax[j // blocksize]`` with, double-quantized,
  ``absmax[b] = f32(nested_quant_map[c[b]] * nested_absmax[b // 256]) + offset``
  (bitsandbytes' ``dequantize_4bit``, every step in float32).
* 8-bit (LLM.int8): ``<p>.weight`` int8 ``[out, in]``, ``<p>.SCB`` float32
  ``[out]`` (the row's absmax), ``<p>.weight_format`` uint8 (0: row-major);
  ``W = CB * SCB / 127`` (``int8_vectorwise_dequant``).

In the IR the codes are kept: NF4 (a ``quant_map`` equal to OpenVINO's nf4
table) as ``nf4`` with groups of ``blocksize`` along the input axis; FP4, or
any other ``quant_map``, as u4 indices into that table kept in float32
(``CODEBOOK``); LLM.int8 as ``i8`` per output channel.  The scales
(``absmax``, ``SCB / 127``) are float32 in the checkpoint and float16 in the
IR: that rounding (relative <= 2^-11 for normal float16 values) and the
float16 arithmetic of the decompression are the only differences.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from ..config import CompressWeightsMode
from ..errors import ExportError
from ..quant.lowering import CompressedWeight
from ..quant.minifloat import NF4_VALUES
from .layers import LayerWeights, QuantizedLinear
from .settings import PrequantizedFormat, name_list

STATE = ".weight.quant_state.bitsandbytes__"
SUFFIXES_4BIT = ("weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map")


def layer_tensors(tensors: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, dict[str, str]]:
    """Quantized layers by prefix, ``{kind: tensor name}``: 4-bit ones by their quant state, 8-bit ones by ``SCB``."""
    found: dict[str, dict[str, str]] = {}
    for name in tensors:
        if STATE in name:
            prefix = name[: name.index(STATE)]
            kinds = {s: f"{prefix}.{s}" for s in SUFFIXES_4BIT if f"{prefix}.{s}" in tensors}
            found[prefix] = {**kinds, "quant_state": name}
        elif name.endswith(".SCB"):
            prefix = name[: -len(".SCB")]
            kinds = {s: f"{prefix}.{s}" for s in ("weight", "weight_format") if f"{prefix}.{s}" in tensors}
            found[prefix] = {**kinds, "SCB": name}
    return found


def _quant_state(prefix: str, name: str, raw: np.ndarray) -> dict:
    try:
        state = json.loads(bytes(np.asarray(raw, dtype=np.uint8).reshape(-1)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise ExportError(f"{name} is not bitsandbytes' JSON quant state ({' '.join(str(exc).split())[:200]}); the "
                          "checkpoint is corrupt.") from exc
    if not isinstance(state, dict) or not _positive_int(state.get("blocksize")):
        raise ExportError(f"{name} has no positive 'blocksize' ({_short(state)}); the checkpoint is corrupt.")
    if "nested_blocksize" in state and not _positive_int(state["nested_blocksize"]):
        raise ExportError(f"{name} has 'nested_blocksize': {_short(state['nested_blocksize'])}, not a positive "
                          "integer; the checkpoint is corrupt.")
    offset = state.get("nested_offset", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not np.isfinite(np.float32(offset)):
        raise ExportError(f"{name} has 'nested_offset': {_short(offset)}, not a finite number; the checkpoint is "
                          "corrupt.")
    return state


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}..."


def check_layer(prefix: str, found: dict[str, str], fmt: PrequantizedFormat, tensors: dict,
                linear_shape: Callable[[str, str], tuple[int, int]], read: Callable[[str], np.ndarray]
                ) -> QuantizedLinear:
    """A bitsandbytes layer: its quant state against the config, then every tensor's presence, dtype and shape."""
    four_bit = "quant_state" in found
    marker = found["quant_state"].removeprefix(f"{prefix}.") if four_bit else "SCB"
    if (fmt.bits == 4) != four_bit:
        raise ExportError(
            f"{prefix}.{marker} is a {4 if four_bit else 8}-bit bitsandbytes layer, but {fmt.source} says "
            f"load_in_{fmt.bits}bit; the weights and the config disagree: use the config saved with these weights."
        )
    n_out, n_in = linear_shape(prefix, marker)
    state: dict = {}
    if four_bit:
        state = _quant_state(prefix, found["quant_state"], read(found["quant_state"]))
        quant_type = found["quant_state"].rsplit("__", 1)[1]
        if state.get("quant_type", quant_type) != quant_type or quant_type != fmt.checkpoint_format:
            raise ExportError(
                f"{found['quant_state']} holds {state.get('quant_type')!r} codes, but {fmt.source} says "
                f"bnb_4bit_quant_type={fmt.checkpoint_format!r}; the weights and the config disagree: use the config "
                "saved with these weights."
            )
        if not isinstance(state.get("shape"), list) or state["shape"] != [n_out, n_in]:
            raise ExportError(
                f"{found['quant_state']} gives shape {_short(state.get('shape'))}, but config.json makes "
                f"{prefix}.weight [{n_out}, {n_in}]; use the config saved with these weights."
            )
        block = state["blocksize"]
        if n_in % block:
            raise ExportError(
                f"{prefix}: bitsandbytes blocks of {block} weights run across rows of {n_in} input channels, which "
                "no per-row group of scales can hold; optimum-wc keeps layers whose input channels are a multiple "
                "of the blocksize. Export the float model and compress it with WeightCompressionConfig."
            )
    elif "weight_format" in found:
        layout = np.asarray(read(found["weight_format"])).reshape(-1)
        if layout.size != 1 or layout[0] != 0:
            raise ExportError(
                f"{found['weight_format']} is {layout.tolist()[:4]}, not 0 (row-major): the int8 weights are in a GPU "
                "tile layout; re-save the checkpoint with bitsandbytes >= 0.45 (row-major weights)."
            )
    _check_kinds(prefix, n_out, n_in, state, {k: (found[k], tuple(tensors[found[k]].shape), tensors[found[k]].dtype)
                                             for k in _expected(n_out, n_in, state) if k in found}, found)
    return QuantizedLinear(prefix, n_in, n_out, dict(found), state=state)


def _expected(n_out: int, n_in: int, state: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{kind: (shape, safetensors dtype)}`` of one layer: 4-bit (``state``: its quant state), LLM.int8 (no state)."""
    if not state:
        return {"weight": ((n_out, n_in), "I8"), "SCB": ((n_out,), "F32")}
    n_blocks = n_out * n_in // state["blocksize"]
    nested = "nested_blocksize" in state
    expected = {"weight": ((n_out * n_in // 2, 1), "U8"), "weight.quant_map": ((16,), "F32"),
                "weight.absmax": ((n_blocks,), "U8" if nested else "F32")}
    if nested:
        expected["weight.nested_absmax"] = ((-(-n_blocks // state["nested_blocksize"]),), "F32")
        expected["weight.nested_quant_map"] = ((256,), "F32")
    return expected


def _check_kinds(prefix: str, n_out: int, n_in: int, state: dict, kinds: dict[str, tuple[str, tuple[int, ...], str]],
                 present: dict[str, str], read_as: dict[str, str] | None = None) -> None:
    """Every tensor of the layer there, of its dtype and shape (``kinds``: ``{kind: (name, shape, dtype)}``, dtypes
    as safetensors names them, or as NumPy does when ``read_as`` maps the former to the latter)."""
    expected = _expected(n_out, n_in, state)
    for kind, (shape, dtype) in expected.items():
        if kind not in kinds:
            raise ExportError(
                f"{prefix}.{kind} is missing from the checkpoint ({', '.join(sorted(present.values()))} are there): "
                f"a {'double-quantized ' if 'weight.nested_absmax' in expected else ''}bitsandbytes "
                f"{4 if state else 8}-bit layer needs {', '.join(f'{prefix}.{k}' for k in expected)}. "
                "The checkpoint is incomplete: re-download or re-save it."
            )
        name, got_shape, got_dtype = kinds[kind]
        dtype = read_as[dtype] if read_as else dtype
        if got_dtype != dtype or (got_shape != shape and not (shape[1:] == (1,) and got_shape == shape[:1])):
            raise ExportError(
                f"{name} is {got_dtype} {list(got_shape)}, but config.json makes {prefix}.weight "
                f"[{n_out}, {n_in}], so it must be {dtype} {list(shape)}; the weights and the config disagree: use "
                "the config saved with these weights."
            )


def _absmax(layer: QuantizedLinear, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 absmax of every block, undoing double quantization as bitsandbytes does (float32 steps)."""
    absmax = np.asarray(arrays["weight.absmax"])
    if "nested_blocksize" not in layer.state:
        return absmax.astype(np.float32)
    per = int(layer.state["nested_blocksize"])
    nested = np.asarray(arrays["weight.nested_absmax"], dtype=np.float32)
    codes = np.asarray(arrays["weight.nested_quant_map"], dtype=np.float32)[absmax.astype(np.int64)]
    scaled = codes * nested[np.arange(absmax.size) // per]
    return (scaled + np.float32(layer.state.get("nested_offset", 0.0))).astype(np.float32)


def _max_scale_rounding(scale: np.ndarray) -> float:
    """The largest relative change of a nonzero scale rounded to float16 (the IR's scales)."""
    s = scale[scale != 0].astype(np.float64)
    return float(np.max(np.abs(s.astype(np.float16).astype(np.float64) - s) / np.abs(s))) if s.size else 0.0


READ_AS = {"U8": "uint8", "I8": "int8", "F32": "float32"}  # the NumPy dtypes the reader hands out


def _f16_scales(scale: np.ndarray, name: str) -> np.ndarray:
    """The float32 scales, refused when one is not finite or beyond float16 (the IR's scales): inf/NaN weights."""
    with np.errstate(over="ignore"):
        bad = np.flatnonzero(~np.isfinite(scale.reshape(-1).astype(np.float16)))
    if bad.size:
        raise ExportError(f"{name} gives the scale {scale.reshape(-1)[bad[0]]} (at flat index {int(bad[0])}), which "
                          "float16, the IR's scales, cannot hold (the weights would be inf/NaN); the checkpoint is "
                          "corrupt: re-download it.")
    return scale


def _finite_table(table: np.ndarray, name: str) -> None:
    if not np.isfinite(table).all():
        raise ExportError(f"{name} holds non-finite values ({table[~np.isfinite(table)][:4].tolist()}); the "
                          "checkpoint is corrupt: re-download it.")


def convert_layer(layer: QuantizedLinear, arrays: dict[str, np.ndarray]) -> LayerWeights:
    """One bitsandbytes linear: its codes as they are, its float32 scales (float16 in the IR)."""
    n_out, n_in = layer.out_features, layer.in_features
    # the reader checked the headers; the arrays handed in are checked again (this converter is public)
    _check_kinds(layer.prefix, n_out, n_in, layer.state,
                 {k: (layer.tensors.get(k, f"{layer.prefix}.{k}"), np.shape(a), np.asarray(a).dtype.name)
                  for k, a in arrays.items()}, layer.tensors, read_as=READ_AS)
    if not layer.state:
        scb = np.asarray(arrays["SCB"], dtype=np.float32).reshape(n_out, 1)
        scale = _f16_scales((scb * np.float32(1 / 127)).astype(np.float32), layer.tensors.get("SCB", "SCB"))
        codes = np.asarray(arrays["weight"], dtype=np.int8).reshape(n_out, n_in)
        cw = CompressedWeight(codes, scale, None, CompressWeightsMode.INT8_SYM, -1, (n_out, n_in))
        return LayerWeights(cw, None, f"LLM.int8 codes kept as i8; scales SCB / 127 in float16 (largest relative "
                                      f"rounding {_max_scale_rounding(scale):.2e})")
    block = int(layer.state["blocksize"])
    packed = np.asarray(arrays["weight"], dtype=np.uint8).reshape(-1)
    codes = np.empty(packed.size * 2, dtype=np.uint8)
    codes[0::2], codes[1::2] = packed >> 4, packed & 0x0F
    codes = codes.reshape(n_out, n_in // block, block)
    if "nested_blocksize" in layer.state:
        _finite_table(np.asarray(arrays["weight.nested_quant_map"]), layer.tensors["weight.nested_quant_map"])
        _finite_table(np.asarray(arrays["weight.nested_absmax"]), layer.tensors["weight.nested_absmax"])
    absmax = _f16_scales(_absmax(layer, arrays), layer.tensors["weight.absmax"])
    scale = absmax.reshape(n_out, n_in // block, 1)
    table = np.asarray(arrays["weight.quant_map"], dtype=np.float32)
    _finite_table(table, layer.tensors["weight.quant_map"])
    rounding = f"absmax in float16 (largest relative rounding {_max_scale_rounding(scale):.2e})"
    if np.array_equal(table.view(np.uint32), NF4_VALUES.astype(np.float32).view(np.uint32)):
        cw = CompressedWeight(codes, scale, None, CompressWeightsMode.NF4, block, (n_out, n_in))
        return LayerWeights(cw, None, f"NF4 codes kept as nf4; {rounding}")
    order = np.argsort(table, kind="stable")  # the look-up table sorted, the codes renumbered to match
    renumber = np.empty(16, dtype=np.uint8)
    renumber[order] = np.arange(16, dtype=np.uint8)
    cw = CompressedWeight(renumber[codes], scale, None, CompressWeightsMode.CODEBOOK, block, (n_out, n_in),
                          codebook=table[order])
    return LayerWeights(cw, None, f"{layer.tensors['quant_state'].rsplit('__', 1)[1].upper()} codes kept as u4 "
                                  f"indices into their float32 quant_map; {rounding}")


def bitsandbytes_format(settings: dict, source: str) -> PrequantizedFormat:
    """transformers' ``BitsAndBytesConfig`` as saved in ``config.json``: 4-bit NF4 / FP4 or LLM.int8."""
    four, eight = bool(settings.get("load_in_4bit")), bool(settings.get("load_in_8bit"))
    if four == eight:
        raise ExportError(
            f"{source}: a bitsandbytes quantization_config needs exactly one of load_in_4bit / load_in_8bit true "
            f"(got {four} / {eight}); fix the config."
        )
    if eight and settings.get("llm_int8_has_fp16_weight"):
        raise ExportError(
            f"{source}: llm_int8_has_fp16_weight=true keeps float weights, not int8 ones; remove quantization_config "
            "from config.json to export the float model."
        )
    storage = str(settings.get("bnb_4bit_quant_storage") or "uint8").replace("torch.", "")
    if four and storage != "uint8":
        raise ExportError(
            f"{source}: bnb_4bit_quant_storage={storage!r} is not supported; optimum-wc reads 4-bit codes stored as "
            "uint8 (the default). Re-save the model with bnb_4bit_quant_storage=torch.uint8."
        )
    quant_type = str(settings.get("bnb_4bit_quant_type") or "fp4") if four else "int8"
    if quant_type not in ("nf4", "fp4", "int8"):
        raise ExportError(f"{source}: bnb_4bit_quant_type={quant_type!r} is not 'nf4' or 'fp4'; fix the config.")
    skip = name_list(settings.get("llm_int8_skip_modules") or None, f"{source}: llm_int8_skip_modules")
    return PrequantizedFormat(
        method="bitsandbytes", bits=4 if four else 8, group_size=-1, sym=True, desc_act=False,
        checkpoint_format=quant_type, source=source, ignore=skip,
    )
