"""MXFP4 MoE experts as OpenAI publishes gpt-oss (``quant_method: "mxfp4"``) -> their codes (pure NumPy).

Layout, after transformers' ``integrations/mxfp4.py`` (``Mxfp4GptOssExperts``,
``convert_moe_packed_tensors``): an expert tensor ``P`` of the model, held
``[experts, in, out]`` (``gate_up_proj``, ``down_proj``), is stored as

* ``P_blocks`` uint8 ``[experts, out, in / 32, 16]``: E2M1 codes of ``P[e].T``
  (sign bit 3; 0..7 = 0, .5, 1, 1.5, 2, 3, 4, 6), two per byte, element
  ``2 k`` in the LOW nibble;
* ``P_scales`` uint8 ``[experts, out, in / 32]``: E8M0, the block's scale is
  ``2^(s - 127)``.

``P[e][i, o] = E2M1[code] * 2^(s - 127)``, on a weight laid out
``[experts, out, in]`` in the IR (the exporter is given the experts that way,
see :mod:`optimum_wc.checkpoints.placeholders`).  Two exact forms
(:data:`EXPERTS_AS`), both read by the CPU plugin's MoE kernel
(``GatherMatmul``) as the experts' values, bit for bit:

* ``"i8"`` (default): twice every E2M1 value is an integer (0, +-1, 2, 3, 4,
  6, 8, 12), so the codes become ``i8`` levels ``2 E2M1[code]`` and the scales
  ``2^(s - 128)``, still E8M0 (8.25 bits per weight).  OpenVINO 2026.4's
  ``GatherMatmul`` takes integer experts compressed, so they run at this size.
* ``"f4e2m1"``: the codes and scales as stored (NNCF's MXFP4 pattern, 4.25
  bits per weight).  OpenVINO 2026.4's ``GatherMatmul`` takes no f4e2m1
  weights: the CPU plugin decompresses them and holds the float experts
  (gpt-oss-20b does not run in 24 GiB).  OpenVINO's development branch lists
  f4e2m1 among ``GatherMatmul``'s weight types; choose this form for an
  OpenVINO that runs it, or for another device.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..config import CompressWeightsMode
from ..errors import ConfigError, ExportError
from ..quant.lowering import CompressedWeight
from .layers import LayerWeights, QuantizedLinear
from .settings import PrequantizedFormat, name_list

BLOCK = 32
EXPERTS_AS = ("i8", "f4e2m1")
# twice the E2M1 value of each code (sign bit 3): integers
_DOUBLED = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
# a byte of two codes -> its two levels as one 16-bit word (element 2 k, the low nibble, in the first byte)
_DOUBLED_PAIRS = np.stack([_DOUBLED[np.arange(256) & 0x0F], _DOUBLED[np.arange(256) >> 4]], axis=-1).view("<u2")[:, 0]


def mxfp4_format(settings: dict, source: str) -> PrequantizedFormat:
    """transformers' ``Mxfp4Config`` as saved in ``config.json``."""
    skip = name_list(settings.get("modules_to_not_convert") or None, f"{source}: modules_to_not_convert")
    return PrequantizedFormat(method="mxfp4", bits=4, group_size=BLOCK, sym=True, desc_act=False,
                              checkpoint_format="mxfp4-blocks", source=source, ignore=skip,
                              experts_as=EXPERTS_AS[0])


def with_experts_as(fmt: PrequantizedFormat, experts_as: str | None) -> PrequantizedFormat:
    """``fmt`` with its MXFP4 experts in the IR form ``experts_as`` (None: unchanged; other formats: unchanged)."""
    if experts_as is None:
        return fmt
    check_experts_as(experts_as)
    return replace(fmt, experts_as=experts_as) if fmt.method == "mxfp4" else fmt


def check_experts_as(experts_as: str | None) -> None:
    """A requested form of MXFP4 experts is one of :data:`EXPERTS_AS` (None: the default)."""
    if experts_as is not None and experts_as not in EXPERTS_AS:
        raise ConfigError(f"mxfp4_experts={experts_as!r} is not a form of MXFP4 experts; use one of "
                          f"{', '.join(map(repr, EXPERTS_AS))}.")


def layer_tensors(tensors: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, dict[str, str]]:
    """Quantized expert tensors by parameter name: ``{"blocks": <P>_blocks, "scales": <P>_scales}``."""
    found: dict[str, dict[str, str]] = {}
    for name in tensors:
        for kind in ("blocks", "scales"):
            if name.endswith(f"_{kind}"):
                found.setdefault(name[: -len(kind) - 1], {})[kind] = name
    return {p: kinds for p, kinds in found.items() if "blocks" in kinds}


def check_layer(param: str, found: dict[str, str], tensors: dict, expected: dict[str, tuple[int, ...]]
                ) -> QuantizedLinear:
    """An MXFP4 expert tensor: the model's parameter it replaces, then the blocks' and scales' dtype and shape."""
    shape = expected.get(param)
    if shape is None or len(shape) != 3:
        raise ExportError(
            f"{found['blocks']} belongs to no [experts, in, out] parameter of the model described by config.json "
            f"({param} is {'absent' if shape is None else list(shape)}); use the config saved with these weights."
        )
    experts, n_in, n_out = shape
    if n_in % BLOCK:
        raise ExportError(f"{param}: {n_in} input channels are not a multiple of MXFP4's block of {BLOCK}; "
                          "the checkpoint does not match its config.json.")
    if "scales" not in found:
        raise ExportError(f"{param}_scales is missing from the checkpoint (its {param}_blocks is there); the "
                          "checkpoint is incomplete: re-download it.")
    layer = QuantizedLinear(param, n_in, n_out, dict(found), param=param, experts=experts)
    _check_kinds(layer, {kind: (tensors[name].dtype, tuple(tensors[name].shape)) for kind, name in found.items()}, "U8")
    return layer


def _check_kinds(layer: QuantizedLinear, kinds: dict[str, tuple[str, tuple[int, ...]]], byte: str) -> None:
    """The blocks and scales there, of dtype ``byte`` (safetensors' or NumPy's name) and the layer's shapes."""
    experts, n_out, n_in = layer.ir_shape
    want = {"blocks": (experts, n_out, n_in // BLOCK, BLOCK // 2), "scales": (experts, n_out, n_in // BLOCK)}
    for kind in want:
        name = layer.tensors.get(kind, f"{layer.param}_{kind}")
        if kind not in kinds:
            raise ExportError(f"{name} is missing (the layer's {', '.join(kinds)} are there); the checkpoint is "
                              "incomplete: re-download it.")
        dtype, shape = kinds[kind]
        if dtype != byte or shape != want[kind]:
            raise ExportError(
                f"{name} is {dtype} {list(shape)}, but config.json makes {layer.param} {[experts, n_in, n_out]} "
                f"([experts, in, out]), so it must be {byte} {list(want[kind])}; use the config saved with these "
                "weights."
            )


def e2m1_codes(packed: np.ndarray) -> np.ndarray:
    """E2M1 codes (uint8) of bytes holding two each, element ``2 k`` in the LOW nibble: the last axis doubles."""
    packed = np.asarray(packed, dtype=np.uint8)
    codes = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), dtype=np.uint8)
    codes[..., 0::2], codes[..., 1::2] = packed & 0x0F, packed >> 4
    return codes


# the largest E8M0 code whose scale 2^(s - 127) float16 holds: the IR decompresses the weights in float16
E8M0_F16_MAX = 127 + 15


def _check_e8m0(stored: np.ndarray, scales_name: str) -> None:
    if np.any(stored == 255):
        raise ExportError(f"{scales_name} holds the E8M0 NaN code 255; the checkpoint is corrupt.")
    if np.any(stored > E8M0_F16_MAX):
        raise ExportError(f"{scales_name} holds the E8M0 code {int(stored.max())}, a scale of "
                          f"2^{int(stored.max()) - 127}, beyond float16 (the largest is 2^15), in which the IR "
                          "decompresses the weights (they would be inf/NaN); the checkpoint is corrupt: re-download "
                          "it.")


def mxfp4_weight(codes: np.ndarray, stored: np.ndarray, scales_name: str, shape: tuple[int, ...]) -> CompressedWeight:
    """MXFP4 weight of E2M1 ``codes [..., G, 32]`` and E8M0 scale bytes ``stored [..., G, 1]`` (``2^(s - 127)``)."""
    _check_e8m0(stored, scales_name)
    scale = np.ldexp(np.float32(1.0), stored.astype(np.int32) - 127).astype(np.float32)
    return CompressedWeight(codes, scale, None, CompressWeightsMode.MXFP4, BLOCK, shape)


def doubled_levels(packed: np.ndarray) -> np.ndarray:
    """``2 E2M1[code]`` (int8, exact: every E2M1 value is a multiple of 1/2) of bytes holding two codes each,
    element ``2 k`` in the low nibble: the last axis doubles, as in :func:`e2m1_codes`."""
    packed = np.asarray(packed, dtype=np.uint8)
    return _DOUBLED_PAIRS[packed].view(np.int8).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))


def i8_weight(levels: np.ndarray, stored: np.ndarray, scales_name: str, shape: tuple[int, ...]) -> CompressedWeight:
    """The MXFP4 weight as i8 ``levels`` (``2 E2M1[code]``) with E8M0 scales ``2^(s - 128)``: the same values.

    A block stored with the smallest scale (``s = 0``) and a nonzero code has
    no such form (E8M0 stops at ``2^-127``): that is an error, not a rounding.
    """
    _check_e8m0(stored, scales_name)
    at_smallest = stored[..., 0] == 0
    smallest = at_smallest.copy()
    if np.any(at_smallest):
        smallest[at_smallest] = np.any(levels[at_smallest] != 0, axis=-1)
    if np.any(smallest):
        raise ExportError(f"{scales_name}: {int(smallest.sum())} blocks have the scale 2^-127 and a nonzero value, "
                          "which have no exact i8 form; export with mxfp4_experts='f4e2m1'.")
    scale = np.ldexp(np.float32(1.0), np.maximum(stored.astype(np.int32), 1) - 128).astype(np.float32)
    return CompressedWeight(levels, scale, None, CompressWeightsMode.INT8_SYM, BLOCK, shape,
                            scale_type="f8e8m0")


def convert_layer(layer: QuantizedLinear, arrays: dict[str, np.ndarray], experts_as: str = "i8") -> LayerWeights:
    """The experts ``[experts, out, in]`` in the IR form ``experts_as`` (see the module's docstring): exact."""
    # the reader checked the headers; the arrays handed in are checked again (this converter is public)
    _check_kinds(layer, {k: (np.asarray(a).dtype.name, np.shape(a)) for k, a in arrays.items()}, "uint8")
    stored, name = np.asarray(arrays["scales"], dtype=np.uint8)[..., None], layer.tensors["scales"]
    if experts_as == "f4e2m1":
        cw = mxfp4_weight(e2m1_codes(arrays["blocks"]), stored, name, layer.ir_shape)
        return LayerWeights(cw, None, f"MXFP4 experts kept as f4e2m1 codes and f8e8m0 scales ({layer.experts} experts)")
    cw = i8_weight(doubled_levels(arrays["blocks"]), stored, name, layer.ir_shape)
    return LayerWeights(cw, None, f"MXFP4 experts kept as i8 levels (twice the E2M1 values) and f8e8m0 scales "
                                  f"({layer.experts} experts)")
