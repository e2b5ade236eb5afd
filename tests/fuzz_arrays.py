"""Test helper: hypothesis strategies for packed checkpoint tensors, and the property every converter must keep.

A drawn tensor mostly has the shape and dtype the layer's settings give it
(random values, sometimes a NaN/inf/0 among the floats), sometimes a wrong
shape (empty ones included) or a wrong dtype.  :func:`ours_or_finite` runs a
conversion: it gives a layer whose dequantized weight is finite and of the
expected shape (its float16 scales, as the IR stores them, finite too), or
one of our errors naming the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from optimum_wc.errors import OptimumWCError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
DTYPES = ["int32", "uint32", "int64", "float16", "float32", "float64", "int8", "uint8"]
# safetensors dtype -> the NumPy dtype PrequantizedCheckpoint.read hands out (bfloat16 as float32, float8 as bytes)
NUMPY_OF = {"I32": "int32", "U32": "uint32", "I64": "int64", "F16": "float16", "F32": "float32", "BF16": "float32",
            "F64": "float64", "I8": "int8", "U8": "uint8", "F8_E4M3": "uint8"}


@dataclass
class Header:
    """What the reader knows of a tensor before reading it (``PrequantizedCheckpoint.tensors``' values)."""

    shape: tuple[int, ...]
    dtype: str


@st.composite
def tensor(draw, shape, dtype, high=None, low=0, wrong=10):
    """An array of ``shape`` and ``dtype``, one draw in ``wrong`` of another shape / dtype; integers mostly in
    ``[low, high]`` (else the dtype's whole range, or ``[0, 1]``)."""
    shape = tuple(shape)
    if draw(st.integers(0, wrong - 1)) == 0:
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    if draw(st.integers(0, wrong - 1)) == 0:
        dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if np.dtype(dtype).kind == "f":
        special = draw(st.sampled_from([None] * 5 + [np.nan, np.inf, -np.inf, 0.0, 1e30]))
        values = np.abs(rng.normal(0, 0.01, size=shape)).astype(dtype)
        if special is not None and values.size:
            with np.errstate(over="ignore"):
                values.reshape(-1)[rng.integers(values.size)] = special
        return values
    info = np.iinfo(dtype)
    top, bottom = draw(st.sampled_from([(info.max, info.min), (info.max, 0), (high, low), (high, low), (1, 0)]))
    top = info.max if top is None else min(top, info.max)
    return rng.integers(max(bottom, info.min), top, size=shape, endpoint=True, dtype=dtype)


def header_of(array: np.ndarray, stored: tuple[str, ...]) -> Header:
    """The header that would give ``array`` (``stored``: the dtypes the layer allows, to tell F8/BF16 apart)."""
    names = [s for s in stored if NUMPY_OF.get(s) == array.dtype.name]
    names += [s for s, n in NUMPY_OF.items() if n == array.dtype.name]
    return Header(tuple(array.shape), names[0])


def our_error(call, *names):
    """``call()``, or one of our errors whose message names one of ``names``; returns the result or None."""
    try:
        return call()
    except OptimumWCError as exc:
        assert any(n in str(exc) for n in names), str(exc)
        return None


def ours_or_finite(convert, shape, *names):
    """A layer whose weight is finite and of ``shape`` (its IR scales finite), or our error naming one of ``names``."""
    lw = our_error(convert, *names)
    if lw is None:
        return None
    w = lw.dequantized()
    assert w.shape == tuple(shape), (w.shape, shape)
    assert np.isfinite(w).all()
    cw = lw.compressed
    if cw.format.scale_type == "f16":  # the IR stores these scales in float16
        with np.errstate(over="ignore"):
            assert np.isfinite(cw.scale.astype(np.float16)).all(), "a scale float16 cannot hold reaches the IR"
    if cw.global_scale is not None:  # NVFP4: the IR multiplies the group scales by it in float32, then float16
        with np.errstate(over="ignore"):
            assert np.isfinite((cw.scale * cw.global_scale).astype(np.float16)).all(), "an NVFP4 scale beyond float16"
    if cw.codebook is not None:
        assert np.isfinite(cw.codebook).all()
    return lw
