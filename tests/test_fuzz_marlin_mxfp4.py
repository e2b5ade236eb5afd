"""Fuzzing Marlin layers and MXFP4 experts: random tensors give the exact layer or our error naming the tensor.

Property-based (hypothesis, derandomized).  Marlin's ``B``/``s`` (AutoGPTQ)
and ``qweight``/``scales`` (AutoAWQ) go straight to
:func:`convert_marlin_layer`, which takes the layer's shape from the packed
tensor itself: a shape that does not fit Marlin's tiles (empty ones
included), a wrong dtype or a NaN/inf scale must be our error.  gpt-oss'
MXFP4 expert ``_blocks``/``_scales`` go through the reader's header check
(:func:`check_layer`, against the model's parameter shapes, sometimes
wrong) and the public converter in both IR forms, with random E8M0 scales
(the NaN code 255, scales beyond float16, 2^-127 with nonzero codes).  A
converted layer is finite and equals the format's own dequantization.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_arrays import FUZZ, Header, our_error, ours_or_finite, tensor
from hypothesis import given
from hypothesis import strategies as st

from optimum_wc.checkpoints import mxfp4 as mx
from optimum_wc.checkpoints.layers import QuantizedLinear, convert_marlin_layer, group_count
from optimum_wc.checkpoints.settings import PrequantizedFormat
from optimum_wc.errors import ExportError
from optimum_wc.quant.marlin import marlin_perms

PREFIX = "model.layers.0.mlp.up_proj"
PARAM = "model.layers.0.mlp.experts.down_proj"
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def marlin(gptq: bool, group_size: int) -> PrequantizedFormat:
    return PrequantizedFormat("gptq" if gptq else "awq", 4, group_size, True, False,
                              "marlin" if gptq else "awq_marlin", "config.json")


def marlin_pack(codes: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AutoGPTQ's ``QuantLinear.pack`` written here: codes ``[out, in]`` and scales ``[G, out]`` -> ``B``, ``s``."""
    perm, scale_perm, single = marlin_perms()
    n_out, n_in = codes.shape
    w = codes.T.reshape(n_in // 16, 16, n_out // 16, 16).transpose(0, 2, 1, 3).reshape(n_in // 16, n_out * 16)
    w = w.reshape(-1, 1024)[:, perm].reshape(w.shape).astype(np.uint32)
    packed = np.zeros((w.shape[0], w.shape[1] // 8), dtype=np.uint32)
    for k in range(8):
        packed |= w[:, k::8] << np.uint32(4 * k)
    s = scales.reshape(-1, 64)[:, scale_perm] if scales.shape[0] > 1 else scales.reshape(-1, 32)[:, single]
    return packed, s.reshape(scales.shape)


@FUZZ
@given(data=st.data(), gptq=st.booleans(), group_size=st.sampled_from([-1, 128, 64]),
       n_in=st.sampled_from([128, 256]), n_out=st.sampled_from([64, 128]))
def test_marlin_layer_of_random_tensors(data, gptq, group_size, n_in, n_out):
    packed = data.draw(tensor((n_in // 16, 2 * n_out), "int32"), label="B")
    scales = data.draw(tensor((group_count(n_in, group_size), n_out), "float16"), label="s")
    fmt = marlin(gptq, group_size)
    lw = ours_or_finite(lambda: convert_marlin_layer(PREFIX, fmt, packed, scales), (n_out, n_in), PREFIX)
    if lw is not None:  # AutoGPTQ's packing of the codes and scales we read gives the tensors back
        cw = lw.compressed
        codes = (cw.codes.reshape(n_out, n_in).view(np.int8).astype(np.int16) + 8).astype(np.uint8)
        again = marlin_pack(codes, cw.scale.reshape(n_out, -1).T.astype(np.float16))
        assert np.array_equal(again[0], packed.view(np.uint32)) and np.array_equal(again[1], scales)


@pytest.mark.parametrize("packed, scales, match", [
    (np.zeros((0, 0), np.int32), np.zeros((1, 0), np.float16), r"B has shape \[0, 0\]: Marlin needs a positive number"),
    (np.zeros((8, 100), np.int32), np.zeros((1, 50), np.float16), r"B has shape \[8, 100\]: Marlin needs .* \(got 128, 50\)"),
    (np.zeros(256, np.int32), np.zeros((1, 64), np.float16), r"B has shape \[256\]: Marlin needs"),
    (np.zeros((8, 128), np.int64), np.zeros((1, 64), np.float16), r"B is int64, but a packed qweight must be int32"),
    (np.zeros((8, 128), np.int32), np.zeros((2, 64), np.float16), r"s has shape \[2, 64\], but the layer's settings "
                                                                  r"make it \[1, 64\]"),
    (np.zeros((8, 128), np.int32), np.full((1, 64), np.nan, np.float16), r"s holds a non-finite scale \(nan"),
])
def test_found_by_fuzzing_marlin_tensors_that_do_not_fit_are_named(packed, scales, match):
    """Before: an empty B gave an empty layer, scales with the wrong group count gave a weight NumPy could not
    dequantize, a NaN scale reached the IR; the other shapes and dtypes were NumPy ValueErrors from the unpacking."""
    with pytest.raises(ExportError, match=rf"{PREFIX}\.{match}"):
        convert_marlin_layer(PREFIX, marlin(True, -1), packed, scales)


@FUZZ
@given(data=st.data(), experts_as=st.sampled_from(mx.EXPERTS_AS), experts=st.sampled_from([1, 2]),
       n_in=st.sampled_from([32, 64]), n_out=st.sampled_from([8, 16]))
def test_mxfp4_experts_of_random_tensors(data, experts_as, experts, n_in, n_out):
    arrays = {"blocks": data.draw(tensor((experts, n_out, n_in // 32, 16), "uint8"), label="blocks"),
              "scales": data.draw(tensor((experts, n_out, n_in // 32), "uint8", low=100, high=140), label="scales")}
    if data.draw(st.integers(0, 14)) == 0:
        del arrays[data.draw(st.sampled_from(sorted(arrays)), label="missing")]
    found = {kind: f"{PARAM}_{kind}" for kind in arrays}
    model = {PARAM: data.draw(st.sampled_from([(experts, n_in, n_out)] * 8 + [(n_in, n_out), (experts, 48, n_out)]))}
    headers = {f"{PARAM}_{kind}": Header(a.shape, {"uint8": "U8"}.get(a.dtype.name, "I32")) for kind, a in arrays.items()}
    checked = our_error(lambda: mx.check_layer(PARAM, found, headers, model), PARAM) if "blocks" in found else None
    layer = checked or QuantizedLinear(PARAM, n_in, n_out, found, param=PARAM, experts=experts)
    lw = ours_or_finite(lambda: mx.convert_layer(layer, arrays, experts_as), (experts, n_out, n_in), PARAM)
    if lw is not None:  # transformers' convert_moe_packed_tensors: E2M1[code] * 2^(scale - 127), low nibble first
        codes = np.stack([arrays["blocks"] & 15, arrays["blocks"] >> 4], axis=-1).reshape(experts, n_out, -1, 32)
        scale = np.ldexp(np.float32(1), arrays["scales"].astype(np.int32) - 127)[..., None]
        assert np.array_equal(lw.dequantized(), (E2M1[codes] * scale).reshape(experts, n_out, n_in))


@pytest.mark.parametrize("experts_as", mx.EXPERTS_AS)
def test_found_by_fuzzing_an_e8m0_scale_beyond_float16_is_refused(experts_as):
    """Before: a scale of 2^126 (code 253) made weights inf in float32, and any code above 142 inf in the IR."""
    layer = QuantizedLinear(PARAM, 32, 8, {"blocks": f"{PARAM}_blocks", "scales": f"{PARAM}_scales"}, param=PARAM,
                            experts=1)
    arrays = {"blocks": np.full((1, 8, 1, 16), 0x77, np.uint8), "scales": np.full((1, 8, 1), 127, np.uint8)}
    assert np.isfinite(mx.convert_layer(layer, arrays, experts_as).dequantized()).all()
    arrays["scales"][0, 3, 0] = 143
    with pytest.raises(ExportError, match=rf"{PARAM}_scales holds the E8M0 code 143, a scale of 2\^16, beyond "
                                          r"float16 \(the largest is 2\^15\)"):
        mx.convert_layer(layer, arrays, experts_as)


def test_found_by_fuzzing_mxfp4_blocks_of_the_wrong_shape_are_named():
    """Before: the converter trusted the shapes it was handed: these blocks gave a weight of 64 codes per row for 32
    input channels (NumPy's reshape error only when it was dequantized or written)."""
    layer = QuantizedLinear(PARAM, 32, 8, {"blocks": f"{PARAM}_blocks", "scales": f"{PARAM}_scales"}, param=PARAM,
                            experts=1)
    arrays = {"blocks": np.zeros((1, 8, 2, 16), np.uint8), "scales": np.full((1, 8, 1), 127, np.uint8)}
    with pytest.raises(ExportError, match=rf"{PARAM}_blocks is uint8 \[1, 8, 2, 16\], but config.json makes {PARAM} "
                                          r"\[1, 32, 8\] \(\[experts, in, out\]\), so it must be uint8 \[1, 8, 1, 16\]"):
        mx.convert_layer(layer, arrays, "i8")
