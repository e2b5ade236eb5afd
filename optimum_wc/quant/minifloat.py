"""Element encodings of the float weight formats: E2M1, E4M3, NF4, E8M0, and sorted codebooks (pure NumPy).

Each encoder maps float32 values to the *codes* OpenVINO stores for that
element type (one code per byte here; :mod:`.bitpack` packs 4-bit codes),
and each ``*_VALUES`` table maps a code back to its value, so decoding is
one look-up.  The rounding is the one of OpenVINO's ``Convert``, which is
what NNCF's exports contain:

* E2M1 (``f4e2m1``): round to nearest, ties to even, from float32;
  saturating at +-6; the sign is kept (``-0.25 -> -0``); NaN -> +6.
* E4M3 (``f8e4m3``, the "FN" variant: no infinities, max 448): the value is
  first rounded to float16, then to E4M3 (nearest, ties to even, subnormals
  down to 2^-9); a float16 magnitude above 464 (or inf, NaN) gives NaN.
* NF4 (``nf4``): the nearest of the 16 NF4 levels; a value exactly between
  two levels takes the lower one.
* E8M0 (``f8e8m0``): a power of two ``2^e``, ``e`` in [-127, 127], stored as ``e + 127``.
* a sorted codebook: the nearest entry, a tie taking the lower one.

Rounding to a small float format is ``q = rint(a / u) * u`` with the
quantum ``u = 2^(max(exponent(a), min_exp) - mantissa_bits)``: exact in
float64, so no table of thresholds is needed.
"""

from __future__ import annotations

import numpy as np

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127

# Code -> value.  E2M1: sign bit 3, exponent bits 1-2 (bias 1), mantissa bit 0.
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                       dtype=np.float32)
NF4_VALUES = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0],
    dtype=np.float32,
)
# The decision points OpenVINO's nf4 conversion uses between neighbouring levels (float32).
NF4_BOUNDARIES = np.array(
    [-0.84809643, -0.6106329, -0.45999527, -0.33967942, -0.2346074, -0.13791174, -0.045525018, 0.03979015,
     0.120255254, 0.20352125, 0.29201376, 0.38931254, 0.5016634, 0.6427869, 0.8614784],
    dtype=np.float32,
)


def _e4m3_table() -> np.ndarray:
    codes = np.arange(256)
    exp, mant, sign = (codes >> 3) & 0xF, codes & 0x7, np.where(codes & 0x80, -1.0, 1.0)
    value = np.where(exp == 0, mant / 8.0 * 2.0**-6, (1 + mant / 8.0) * 2.0 ** (exp - 7.0)) * sign
    value[(codes & 0x7F) == 0x7F] = np.nan
    return value.astype(np.float32)


E4M3_VALUES = _e4m3_table()


def round_to_minifloat(magnitude: np.ndarray, mantissa_bits: int, min_exp: int) -> np.ndarray:
    """``magnitude`` (>= 0, finite) rounded to nearest, ties to even, on the grid of a float format (float64).

    The grid has ``mantissa_bits`` explicit mantissa bits, normal numbers
    from ``2^min_exp`` and subnormals below; no upper limit (callers saturate).
    """
    a = np.asarray(magnitude, dtype=np.float64)
    _, e = np.frexp(a)  # a = m 2^e, m in [0.5, 1): the exponent of a is e - 1
    quantum = np.ldexp(1.0, np.maximum(e - 1, min_exp) - mantissa_bits)
    return np.rint(a / quantum) * quantum


def _signed_codes(x: np.ndarray, magnitude_codes: np.ndarray, sign_bit: int) -> np.ndarray:
    return (magnitude_codes | (np.signbit(x).astype(np.uint8) << np.uint8(sign_bit))).astype(np.uint8)


def e2m1_codes(x: np.ndarray) -> np.ndarray:
    """E2M1 codes (uint8, 0-15) of float32 ``x``: nearest, ties to even, saturating at 6, NaN -> +6."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    finite = np.isfinite(a)
    q = np.minimum(round_to_minifloat(np.where(finite, a, 0), 1, 0), E2M1_MAX)
    q = np.where(finite, q, E2M1_MAX)
    codes = np.searchsorted(E2M1_VALUES[:8], q.astype(np.float32)).astype(np.uint8)
    return np.where(np.isnan(x), np.uint8(7), _signed_codes(x, codes, 3)).astype(np.uint8)


def e4m3_codes(x: np.ndarray) -> np.ndarray:
    """E4M3 (FN) codes (uint8) of float32 ``x``, rounded through float16 as OpenVINO's ``Convert`` does."""
    with np.errstate(over="ignore"):  # beyond float16: inf, which gives NaN as in OpenVINO
        half = np.asarray(x, dtype=np.float32).astype(np.float16)
    a = np.abs(half).astype(np.float64)
    finite = np.isfinite(a)
    q = round_to_minifloat(np.where(finite, a, 0), 3, -6)
    nan = ~finite | (q > E4M3_MAX)
    magnitude = np.searchsorted(E4M3_VALUES[:127], np.where(nan, 0, q).astype(np.float32)).astype(np.uint8)
    magnitude = np.where(nan, np.uint8(0x7F), magnitude)
    return _signed_codes(half, magnitude, 7)


def nf4_codes(x: np.ndarray) -> np.ndarray:
    """NF4 codes (uint8, 0-15): the nearest NF4 level, a tie taking the lower level (NaN -> 0, as OpenVINO)."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(np.isnan(x), 0, np.searchsorted(NF4_BOUNDARIES, x, side="left")).astype(np.uint8)


def codebook_boundaries(codebook: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring entries of a sorted float32 codebook (float32, as NNCF computes them)."""
    cb = np.asarray(codebook, dtype=np.float32)
    return (np.float32(0.5) * (cb[1:] + cb[:-1])).astype(np.float32)


def codebook_codes(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the sorted ``codebook`` (a tie takes the lower one), uint8."""
    return np.searchsorted(codebook_boundaries(codebook), np.asarray(x, dtype=np.float32), side="left").astype(np.uint8)


def e8m0_exponent(scale: np.ndarray) -> np.ndarray:
    """The smallest power-of-two exponent ``e`` with ``2^e >= scale``, clipped to [-127, 127] (float32 in, int32 out).

    Exact: ``ceil(log2(scale))`` from the float's own exponent and mantissa.
    """
    m, e = np.frexp(np.asarray(scale, dtype=np.float32))  # scale = m 2^e, m in [0.5, 1)
    exponent = np.where(m == 0.5, e - 1, e)  # an exact power of two keeps its exponent
    return np.clip(exponent, E8M0_MIN_EXP, E8M0_MAX_EXP).astype(np.int32)


def e8m0_codes(exponent: np.ndarray) -> np.ndarray:
    """E8M0 codes (uint8) of power-of-two exponents in [-127, 127]."""
    return (np.asarray(exponent, dtype=np.int32) + 127).astype(np.uint8)
