"""Fuzzing the GPTQ/AWQ layer conversion: random shapes, dtypes and values give a layer or our error naming a tensor.

Property-based (hypothesis, derandomized).  The packed tensors go straight
to :func:`convert_gptq_layer` / :func:`convert_awq_layer` (the reader checks
shapes from the headers first, but the converters are public and the values
are only seen here): the result is a layer whose dequantized weight is
finite, or an :class:`~optimum_wc.errors.ExportError` naming the tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimum_wc.checkpoints.layers import convert_awq_layer, convert_gptq_layer, packed_shapes
from optimum_wc.checkpoints.settings import PrequantizedFormat
from optimum_wc.errors import ExportError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
PREFIX = "model.layers.0.mlp.up_proj"
DTYPES = ["int32", "uint32", "int64", "float16", "float32", "float64", "int8", "uint8"]


def gptq(bits=4, group_size=32, sym=False, desc_act=False, checkpoint_format="gptq"):
    return PrequantizedFormat("gptq", bits, group_size, sym, desc_act, checkpoint_format, "config.json")


def awq(group_size=32, checkpoint_format="awq_gemm"):
    return PrequantizedFormat("awq", 4, group_size, False, False, checkpoint_format, "config.json")


@st.composite
def tensor(draw, shape, kind):
    """Mostly the right shape and dtype with random values; sometimes a wrong shape or dtype."""
    if draw(st.integers(0, 9)) == 0:
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))
    dtype = {"scales": "float16", "g_idx": "int32"}.get(kind, "int32")
    if draw(st.integers(0, 9)) == 0:
        dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        special = draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf, 0.0]))
        values = rng.normal(0, 0.01, size=shape).astype(dtype)
        if special is not None and values.size:
            values.reshape(-1)[rng.integers(values.size)] = special
        return values
    info = np.iinfo(dtype)
    high = draw(st.sampled_from([info.max, 8, 1]))  # g_idx: small values stay in range more often
    return rng.integers(info.min if high == info.max else 0, high, size=shape, endpoint=True, dtype=dtype)


def _layer_or_our_error(convert):
    try:
        lw = convert()
    except ExportError as exc:
        assert PREFIX in str(exc) or "group_size" in str(exc), str(exc)
        return None
    assert np.isfinite(lw.dequantized()).all()
    return lw


@FUZZ
@given(data=st.data(), bits=st.sampled_from([2, 3, 4, 8]), group_size=st.sampled_from([-1, 16, 32, 48]),
       sym=st.booleans(), desc_act=st.booleans(), v2=st.booleans(), n_in=st.sampled_from([32, 64, 96]),
       n_out=st.sampled_from([32, 64]))
def test_gptq_conversion_of_random_tensors(data, bits, group_size, sym, desc_act, v2, n_in, n_out):
    fmt = gptq(bits, group_size, sym, desc_act, "gptq_v2" if v2 else "gptq")
    shapes = packed_shapes(fmt, n_in, n_out)
    t = {kind: data.draw(tensor(shape, kind), label=kind) for kind, shape in shapes.items()}
    if not desc_act and data.draw(st.booleans(), label="no g_idx"):
        t["g_idx"] = None
    _layer_or_our_error(lambda: convert_gptq_layer(PREFIX, fmt, t["qweight"], t["qzeros"], t["scales"], t["g_idx"],
                                                   n_in, n_out))


@FUZZ
@given(data=st.data(), group_size=st.sampled_from([-1, 32, 64, 128]), gemv=st.booleans(),
       n_in=st.sampled_from([64, 128]), n_out=st.sampled_from([32, 64]))
def test_awq_conversion_of_random_tensors(data, group_size, gemv, n_in, n_out):
    fmt = awq(group_size, "awq_gemv" if gemv else "awq_gemm")
    shapes = packed_shapes(fmt, n_in, n_out)
    t = {kind: data.draw(tensor(shape, kind), label=kind) for kind, shape in shapes.items()}
    _layer_or_our_error(lambda: convert_awq_layer(PREFIX, fmt, t["qweight"], t["qzeros"], t["scales"], n_in, n_out))


def _valid_gptq(n_in=64, n_out=32, fmt=None):
    fmt = fmt or gptq()
    rng = np.random.default_rng(0)
    shapes = packed_shapes(fmt, n_in, n_out)
    return fmt, {"qweight": rng.integers(-(2**31), 2**31, shapes["qweight"], dtype=np.int32),
                 "qzeros": rng.integers(-(2**31), 2**31, shapes["qzeros"], dtype=np.int32),
                 "scales": np.full(shapes["scales"], 0.01, np.float16),
                 "g_idx": (np.arange(n_in) // 32).astype(np.int32)}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_scales_are_refused_naming_the_tensor(value):
    """Before: a NaN/inf scale went into the IR (every weight of its group NaN/inf)."""
    fmt, t = _valid_gptq()
    t["scales"][1, 3] = value
    with pytest.raises(ExportError, match=rf"{PREFIX}\.scales holds a non-finite scale \({value}"):
        convert_gptq_layer(PREFIX, fmt, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 64, 32)


@pytest.mark.parametrize("kind, bad, match", [
    ("qweight", np.zeros((4, 32), np.int64), r"qweight is int64, but a packed qweight must be int32 or uint32"),
    ("qweight", np.zeros((7, 32), np.int32), r"qweight has shape \[7, 32\], but the layer's settings make it \[8, 32\]"),
    ("qzeros", np.zeros((2, 3), np.int32), r"qzeros has shape \[2, 3\]"),
    ("g_idx", np.zeros(64, np.float32), r"g_idx is float32, but a packed g_idx must be int32 or int64"),
    ("scales", np.zeros((2, 32), np.int32), r"scales is int32"),
])
def test_found_by_fuzzing_a_wrong_shape_or_dtype_is_named(kind, bad, match):
    """Before: IndexError/ValueError from NumPy deep in the unpacking (or, for int64 words, wrong codes)."""
    fmt, t = _valid_gptq()
    t[kind] = bad
    with pytest.raises(ExportError, match=rf"{PREFIX}\.{match}"):
        convert_gptq_layer(PREFIX, fmt, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 64, 32)


def test_g_idx_out_of_range_is_refused_naming_the_tensor():
    fmt, t = _valid_gptq(fmt=gptq(desc_act=True))
    t["g_idx"][5] = 2
    with pytest.raises(ExportError, match=rf"{PREFIX}\.g_idx maps input channel 5 to group 2, outside \[0, 2\)"):
        convert_gptq_layer(PREFIX, fmt, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 64, 32)


def test_found_by_fuzzing_awq_gemv_group_size_without_a_layout():
    """Before: KeyError(16) from the zeros-width table."""
    with pytest.raises(ExportError, match="group_size=16: AutoAWQ's GEMV layout is defined for group sizes 32, 64"):
        packed_shapes(awq(16, "awq_gemv"), 64, 32)
