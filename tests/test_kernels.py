"""The fused round-to-nearest kernel against the NumPy reference path: the same bytes and the same error sums."""

from __future__ import annotations

import numpy as np
import pytest

from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.quant import kernels
from optimum_wc.quant.lowering import Bfloat16Bits, quantize, use_fused_kernel


@pytest.fixture
def reference_and_fused():
    """``run(w, ...)`` gives quantize's result with the NumPy reference path and with the fused kernel."""
    assert kernels.available(), "numba is in requirements.txt: the fused kernel must be testable"

    def run(w, mode, group_size, axis=1, packed=False):
        try:
            use_fused_kernel(False)
            ref = quantize(w, mode, group_size, axis, packed=packed)
            use_fused_kernel(True)
            fused = quantize(w, mode, group_size, axis, packed=packed)
        finally:
            use_fused_kernel(True)
        return ref, fused

    return run


def assert_identical(ref, fused):
    for field in ("codes", "packed", "scale", "zero_point"):
        a, b = getattr(ref, field), getattr(fused, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, field
            assert np.array_equal(a, b, equal_nan=True), field
    assert ref.packed_shape == fused.packed_shape
    # the error sums feed the report's relative errors, which are written into the IR: they must match exactly
    assert ref.sq_error == fused.sq_error or (np.isnan(ref.sq_error) and np.isnan(fused.sq_error))
    assert ref.sq_norm == fused.sq_norm or (np.isnan(ref.sq_norm) and np.isnan(fused.sq_norm))


def awkward_weight(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Rows of many scales, a zero row, an all-positive and an all-negative row, and exact rounding ties."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(1e-3, 3, size=(rows, 1))).astype(np.float32)
    w[1] = 0.0  # the scale floors at eps
    w[2] = np.abs(w[2])  # asymmetric: the minimum clips to 0
    w[3] = -np.abs(w[3])
    w[4] = (np.arange(cols) % 16 - 7.5).astype(np.float32) * np.float32(0.25)  # halves: ties to even
    w[5] = 1e-9  # below eps after scaling
    w[6, ::3] = -w[6, ::3] * 40  # one heavy negative channel per three
    return w


MODES = [M.INT4_ASYM, M.INT4_SYM, M.INT8_ASYM, M.INT8_SYM]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group_size", [-1, 16, 32, 128])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_fused_kernel_equals_reference(reference_and_fused, mode, group_size, dtype):
    w = awkward_weight(40, 512)
    if dtype == "float16":
        w = w.astype(np.float16)
    elif dtype == "bfloat16":
        w = (w.view(np.uint32) >> 16).astype(np.uint16).view(Bfloat16Bits)
    assert_identical(*reference_and_fused(w, mode, group_size))


@pytest.mark.parametrize("mode", [M.INT4_ASYM, M.INT4_SYM])
def test_fused_kernel_packs_blocks_like_the_reference(reference_and_fused, mode):
    # large enough to be split into blocks, so each block's codes are packed by the kernel
    w = awkward_weight(1200, 768, seed=1)
    ref, fused = reference_and_fused(w, mode, 64, packed=True)
    assert ref.packed is not None
    assert_identical(ref, fused)


def test_long_rows_reduce_exactly(reference_and_fused):
    # per-channel rows longer than a power of two: the halving min/max folds the tail first
    w = awkward_weight(8, 13824 + 5, seed=2)
    w[7, -1] = -50.0  # the extreme value is in the folded tail
    for mode in MODES:
        assert_identical(*reference_and_fused(w, mode, -1))


def test_non_finite_blocks_take_the_reference_path(reference_and_fused):
    w = awkward_weight(16, 256)
    w[3, 10] = np.nan
    w[9, 0] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):  # NumPy's own warnings on the reference path
        for mode in MODES:
            assert_identical(*reference_and_fused(w, mode, 32))


def test_weights_reduced_along_axis_0_take_the_reference_path(reference_and_fused):
    w = awkward_weight(24, 256).T.copy()
    assert_identical(*reference_and_fused(w, M.INT4_ASYM, 32, axis=0))
