"""Fuzzing compressed-tensors layers: random tensors give a finite layer or our error naming the tensor.

Property-based (hypothesis, derandomized).  Every scheme optimum-wc keeps
(pack-quantized and naive-quantized int4/int8, float-quantized FP8,
NVFP4 and MXFP4 packs) gets its tensors mostly of the right shape and dtype
with random values (out-of-range levels and zero points, NaN/inf scales,
g_idx outside the groups), sometimes of a wrong shape (empty ones included)
or dtype, sometimes one missing.  Both the header check the reader runs
(:func:`check_layer`, on the shapes and dtypes) and the public converter
(:func:`convert_layer`, on the values) must give a result or an
:class:`~optimum_wc.errors.ExportError` naming the layer; a converted layer's
weight is finite and ``[out, in]``.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_arrays import FUZZ, NUMPY_OF, header_of, our_error, ours_or_finite, tensor
from hypothesis import given
from hypothesis import strategies as st
from test_compressed_tensors import _unpack  # compressed-tensors' own unpacking, written out once

from optimum_wc.checkpoints import compressed_tensors as ct
from optimum_wc.checkpoints.settings import LayerGroup, PrequantizedFormat
from optimum_wc.errors import ExportError

PREFIX = "model.layers.0.mlp.up_proj"


def _group(bits, group_size, sym, act_order, fmt):
    float_weights = fmt not in ("pack-quantized", "naive-quantized")
    return LayerGroup(("Linear",), bits, group_size, sym, act_order, fmt, float_weights)


INT_GROUPS = st.builds(_group, st.sampled_from([4, 8]), st.sampled_from([-1, 0, 16, 32]), st.booleans(), st.booleans(),
                       st.sampled_from(["pack-quantized", "naive-quantized"]))
GROUPS = (INT_GROUPS | INT_GROUPS | INT_GROUPS
          | st.builds(_group, st.just(8), st.sampled_from([-1, 0]), st.just(True), st.just(False),
                      st.just("float-quantized"))
          | st.builds(_group, st.just(4), st.just(16), st.just(True), st.just(False), st.just("nvfp4-pack-quantized"))
          | st.builds(_group, st.just(4), st.just(32), st.just(True), st.just(False), st.just("mxfp4-pack-quantized")))


def _fmt(group: LayerGroup) -> PrequantizedFormat:
    return PrequantizedFormat("compressed-tensors", group.bits, group.group_size, group.sym, group.act_order,
                              group.checkpoint_format, "config.json", layer_groups=(group,))


def _layer_tensors(data, group: LayerGroup, n_in: int, n_out: int) -> dict[str, np.ndarray]:
    """The layer's tensors as the reader hands them out, drawn mostly right; sometimes one missing."""
    wanted = {kind: (shape, dtypes) for kind, (shape, dtypes, _) in ct.expected_tensors(group, n_out, n_in).items()}
    if group.act_order:
        wanted["weight_g_idx"] = ((n_in,), ("I32", "I64"))
    if group.checkpoint_format == "pack-quantized":
        wanted["weight_shape"] = ((2,), ("I32",))
    n_groups = n_in // group.group_size if group.group_size > 0 else 1
    mid = 2 ** (group.bits - 1)
    in_range = {"weight_g_idx": (-1, n_groups - 1), "weight_scale": (0, 0x7E), "weight_zero_point": (-mid, mid - 1),
                "weight": (0, 0x7E) if group.float_weights else (-mid, mid - 1)}  # (E4M3 bytes without NaN)
    arrays = {}
    for kind, (shape, dtypes) in wanted.items():
        dtype = NUMPY_OF[data.draw(st.sampled_from(dtypes), label=f"{kind} dtype")]
        low, high = in_range.get(kind, (0, None))
        arrays[kind] = data.draw(tensor(shape, dtype, high=high, low=low), label=kind)
    if arrays["weight_scale"].dtype == np.float32 and data.draw(st.booleans()):  # bfloat16 scales: float16 holds them
        with np.errstate(over="ignore"):
            arrays["weight_scale"] = arrays["weight_scale"].astype(np.float16).astype(np.float32)
    if "weight_shape" in arrays and data.draw(st.integers(0, 3)):
        arrays["weight_shape"] = np.array([n_out, n_in], dtype=arrays["weight_shape"].dtype)
    if "weight_global_scale" in arrays and arrays["weight_global_scale"].dtype.kind == "f" and data.draw(st.booleans()):
        arrays["weight_global_scale"] = np.full_like(arrays["weight_global_scale"], 448.0 * 6)
    if "weight_g_idx" in arrays and data.draw(st.booleans()):  # act-order groups: a permutation of whole groups
        natural = np.arange(n_in) // (n_in // n_groups)
        arrays["weight_g_idx"] = np.random.default_rng(n_in).permutation(natural).astype(np.int32)
    if data.draw(st.integers(0, 14)) == 0:
        del arrays[data.draw(st.sampled_from(sorted(arrays)), label="missing")]
    return arrays


@FUZZ
@given(data=st.data(), group=GROUPS, n_in=st.sampled_from([32, 64]), n_out=st.sampled_from([16, 32]))
def test_compressed_tensors_layer_of_random_tensors(data, group, n_in, n_out):
    arrays = _layer_tensors(data, group, n_in, n_out)
    expected = ct.expected_tensors(group, n_out, n_in)
    found = {kind: f"{PREFIX}.{kind}" for kind in arrays}
    headers = {f"{PREFIX}.{kind}": header_of(a, expected.get(kind, ((), ("I32",), ""))[1]) for kind, a in arrays.items()}
    our_error(lambda: ct.check_layer(PREFIX, found, _fmt(group), headers, lambda p, m: (n_out, n_in)), PREFIX)
    lw = ours_or_finite(lambda: ct.convert_layer(PREFIX, group, arrays, n_in, n_out), (n_out, n_in), PREFIX)
    if lw is not None and not group.float_weights:  # the integers kept exactly: compressed-tensors' dequantization
        assert np.array_equal(lw.dequantized(), _reference(group, arrays, n_in, n_out))


def _reference(group: LayerGroup, arrays: dict, n_in: int, n_out: int) -> np.ndarray:
    """``scale[o, g(i)] * (q[o, i] - z[o, g(i)])`` in float32 (``z = 0`` symmetric), from the tensors alone."""
    if "weight_packed" in arrays:
        q = _unpack(arrays["weight_packed"], group.bits, n_in)
    else:
        q = arrays["weight"].astype(np.int64)
    stored = arrays["weight_scale"].astype(np.float32)
    scale = np.broadcast_to(stored.reshape(1, 1), (n_out, 1)) if group.group_size == 0 else stored.reshape(n_out, -1)
    z = np.zeros(scale.shape, dtype=np.int64)
    if not group.sym:
        zp = arrays["weight_zero_point"]
        if group.checkpoint_format == "pack-quantized" and group.group_size != 0:
            zp = _unpack(zp.T, group.bits, n_out).T
        z = np.broadcast_to(zp.astype(np.int64).reshape(-1, scale.shape[1]), scale.shape)
    g_idx = arrays.get("weight_g_idx")
    if g_idx is None or np.any(g_idx < 0):
        g_idx = np.arange(n_in) // (n_in // scale.shape[1])
    return ((q - z[:, g_idx]) * scale[:, g_idx]).astype(np.float32)


def _int_layer(fmt="naive-quantized", bits=4, sym=False, n_in=32, n_out=16, group_size=16):
    group = _group(bits, group_size, sym, False, fmt)
    rng = np.random.default_rng(0)
    arrays = {"weight": rng.integers(-8, 8, (n_out, n_in), dtype=np.int8),
              "weight_scale": np.full((n_out, n_in // group_size), 0.5, np.float16),
              "weight_zero_point": np.zeros((n_out, n_in // group_size), np.int8)}
    return group, arrays


@pytest.mark.parametrize("zero_point", [-100, 8, 127])
def test_found_by_fuzzing_zero_points_outside_the_levels_are_refused(zero_point):
    """Before: -100 was wrapped into the IR's u8 zero point (156 - 8: every weight of its group wrong, silently),
    8 and 127 were kept with 8-bit codes though compressed-tensors clamps zero points to the levels."""
    group, arrays = _int_layer()
    assert np.array_equal(ct.convert_layer(PREFIX, group, arrays, 32, 16).dequantized(),
                          _reference(group, arrays, 32, 16))
    arrays["weight_zero_point"][3, 1] = zero_point
    with pytest.raises(ExportError, match=rf"{PREFIX}\.weight_zero_point holds zero points from -?\d+ to \d+, "
                                          r"outside \[-8, 7\] for 4 bits"):
        ct.convert_layer(PREFIX, group, arrays, 32, 16)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_found_by_fuzzing_non_finite_scales_are_refused(value):
    """Before: a float16 NaN/inf weight_scale went into the IR as it was (a float32 NaN was refused as 'not exact')."""
    group, arrays = _int_layer()
    arrays["weight_scale"][0, 1] = value
    with pytest.raises(ExportError, match=rf"{PREFIX}\.weight_scale holds a non-finite scale \({value} at flat index"):
        ct.convert_layer(PREFIX, group, arrays, 32, 16)


@pytest.mark.parametrize("global_scale", [1e-3, 1e-40])
def test_found_by_fuzzing_nvfp4_scales_beyond_float16_are_refused(global_scale):
    """Before: E4M3 448 / 1e-3 (and 1 / 1e-40 = inf in float32) went into the IR, where float16 holds neither."""
    group = _group(4, 16, True, False, "nvfp4-pack-quantized")
    arrays = {"weight_packed": np.full((16, 16), 0x22, np.uint8), "weight_scale": np.full((16, 2), 0x7E, np.uint8),
              "weight_global_scale": np.array([2688.0], np.float32)}
    assert np.isfinite(ct.convert_layer(PREFIX, group, arrays, 32, 16).dequantized()).all()
    arrays["weight_global_scale"][0] = global_scale
    with pytest.raises(ExportError, match=rf"{PREFIX}\.weight_global_scale is .*: the largest group scale over it, "
                                          r"\S+, is beyond float16's 65504"):
        ct.convert_layer(PREFIX, group, arrays, 32, 16)


@pytest.mark.parametrize("kind, bad, match", [
    ("weight", np.ones((16, 31), np.int8), r"weight has shape \[16, 31\], but config.json makes .* must be \[16, 32\]"),
    ("weight_scale", np.ones((16, 2), np.float64), r"weight_scale is float64, but a naive-quantized weight_scale must "
                                                   r"be float16 or float32"),
    ("weight_zero_point", None, r"weight_zero_point is missing from the checkpoint"),
])
def test_found_by_fuzzing_the_converter_checks_what_it_is_handed(kind, bad, match):
    """Before: the converter trusted the reader's header check: a [16, 31] weight silently gave a [16, 31] layer, a
    float64 scale was taken, a missing zero point was a KeyError (and other shapes NumPy reshape/broadcast errors)."""
    group, arrays = _int_layer()
    arrays[kind] = bad
    arrays = {k: a for k, a in arrays.items() if a is not None}
    with pytest.raises(ExportError, match=rf"{PREFIX}\.{match}"):
        ct.convert_layer(PREFIX, group, arrays, 32, 16)
