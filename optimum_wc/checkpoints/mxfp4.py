"""MXFP4 MoE experts as OpenAI publishes gpt-oss (``quant_method: "mxfp4"``) -> their codes (pure NumPy).

Layout, after transformers' ``integrations/mxfp4.py`` (``Mxfp4GptOssExperts``,
``convert_moe_packed_tensors``): an expert tensor ``P`` of the model, held
``[experts, in, out]`` (``gate_up_proj``, ``down_proj``), is stored as

* ``P_blocks`` uint8 ``[experts, out, in / 32, 16]``: E2M1 codes of ``P[e].T``
  (sign bit 3; 0..7 = 0, .5, 1, 1.5, 2, 3, 4, 6), two per byte, element
  ``2 k`` in the LOW nibble;
* ``P_scales`` uint8 ``[experts, out, in / 32]``: E8M0, the block's scale is
  ``2^(s - 127)``.

``P[e][i, o] = E2M1[code] * 2^(s - 127)``: kept in the IR as ``f4e2m1`` codes
and ``f8e8m0`` scales (NNCF's MXFP4 pattern), exact, on a weight laid out
``[experts, out, in]`` (the exporter is given the experts that way, see
:mod:`optimum_wc.checkpoints.placeholders`).
"""

from __future__ import annotations

import numpy as np

from ..config import CompressWeightsMode
from ..errors import ExportError
from ..quant.lowering import CompressedWeight
from .layers import LayerWeights, QuantizedLinear
from .settings import PrequantizedFormat

BLOCK = 32


def mxfp4_format(settings: dict, source: str) -> PrequantizedFormat:
    """transformers' ``Mxfp4Config`` as saved in ``config.json``."""
    skip = settings.get("modules_to_not_convert") or []
    return PrequantizedFormat(method="mxfp4", bits=4, group_size=BLOCK, sym=True, desc_act=False,
                              checkpoint_format="mxfp4-blocks", source=source, ignore=tuple(str(s) for s in skip))


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
    want = {"blocks": (experts, n_out, n_in // BLOCK, BLOCK // 2), "scales": (experts, n_out, n_in // BLOCK)}
    for kind, name in found.items():
        info = tensors[name]
        if info.dtype != "U8" or tuple(info.shape) != want[kind]:
            raise ExportError(
                f"{name} is {info.dtype} {list(info.shape)}, but config.json makes {param} {list(shape)} "
                f"([experts, in, out]), so it must be U8 {list(want[kind])}; use the config saved with these weights."
            )
    return QuantizedLinear(param, n_in, n_out, dict(found), param=param, experts=experts)


def e2m1_codes(packed: np.ndarray) -> np.ndarray:
    """E2M1 codes (uint8) of bytes holding two each, element ``2 k`` in the LOW nibble: the last axis doubles."""
    packed = np.asarray(packed, dtype=np.uint8)
    codes = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), dtype=np.uint8)
    codes[..., 0::2], codes[..., 1::2] = packed & 0x0F, packed >> 4
    return codes


def mxfp4_weight(codes: np.ndarray, stored: np.ndarray, scales_name: str, shape: tuple[int, ...]) -> CompressedWeight:
    """MXFP4 weight of E2M1 ``codes [..., G, 32]`` and E8M0 scale bytes ``stored [..., G, 1]`` (``2^(s - 127)``)."""
    if np.any(stored == 255):
        raise ExportError(f"{scales_name} holds the E8M0 NaN code 255; the checkpoint is corrupt.")
    scale = np.ldexp(np.float32(1.0), stored.astype(np.int32) - 127).astype(np.float32)
    return CompressedWeight(codes, scale, None, CompressWeightsMode.MXFP4, BLOCK, shape)


def convert_layer(layer: QuantizedLinear, arrays: dict[str, np.ndarray]) -> LayerWeights:
    """The codes and E8M0 scales as stored, on the weight ``[experts, out, in]``."""
    stored = np.asarray(arrays["scales"], dtype=np.uint8)[..., None]
    cw = mxfp4_weight(e2m1_codes(arrays["blocks"]), stored, layer.tensors["scales"], layer.ir_shape)
    return LayerWeights(cw, None, f"MXFP4 experts kept as f4e2m1 codes and f8e8m0 scales ({layer.experts} experts)")
