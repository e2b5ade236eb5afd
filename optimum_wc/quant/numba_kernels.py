"""The numba kernels themselves, at module level so that numba's on-disk cache finds them again.

Imported only by :mod:`.kernels` and :mod:`.float_kernels` (which say what
each computes and hold the NumPy-facing wrappers), and only when numba is
installed.  Functions defined inside another function (closures) were
recompiled in every process and added a new cache file each time; defined
here, each is compiled once per machine and then loaded.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .kernel_flags import KIND_E2M1, KIND_E4M3, SCALE_CODEBOOK, SCALE_GIVEN, SCALE_MX, SCALE_SIGNED

_EPS = float(np.finfo(np.float32).eps)

# Integer kernels: no reassociation, no reciprocal division, no FMA contraction: every float32 operation stays as
# written. "no NaN / no inf / no signed zero" only lets the min/max loops vectorise; the caller checks the block is
# finite (through its squared norm) and takes the reference path otherwise.
int_jit = numba.njit(nogil=True, cache=True, fastmath={"nnan", "ninf", "nsz"}, boundscheck=False)
# Float-format kernels: "no NaN / no inf" lets the loops vectorise (the caller checks the block is finite); no
# signed-zero liberties, since -0.0 keeps its sign bit in E2M1 and E4M3.
float_jit = numba.njit(nogil=True, cache=True, fastmath={"nnan", "ninf"}, boundscheck=False)


@int_jit
def pack_codes(codes, packed):
    """Two codes per byte, element 0 in the low nibble (an odd last code gets a zero high nibble)."""
    n = codes.size
    for i in range(n // 2):
        packed[i] = (codes[2 * i] & np.uint8(0x0F)) | ((codes[2 * i + 1] & np.uint8(0x0F)) << np.uint8(4))
    if n % 2:
        packed[n // 2] = codes[n - 1] & np.uint8(0x0F)

@int_jit
def row_min_max(w, r, low, high, scratch_low, scratch_high):
    """``min(low, min w[r])`` and ``max(high, max w[r])``; long rows are halved in scratch (vector loops)."""
    g = w.shape[1]
    if g < 256:
        for k in range(g):
            low = min(low, w[r, k])
            high = max(high, w[r, k])
        return low, high
    p = 1
    while p * 2 <= g:
        p *= 2
    for j in range(p):
        scratch_low[j] = w[r, j]
        scratch_high[j] = w[r, j]
    for j in range(g - p):  # unsigned indices: no negative-index wrap-around, so the loop vectorises
        u = np.uint64(p + j)
        scratch_low[j] = min(scratch_low[j], w[r, u])
        scratch_high[j] = max(scratch_high[j], w[r, u])
    while p > 1:
        p //= 2
        for j in range(p):
            u = np.uint64(p + j)
            scratch_low[j] = min(scratch_low[j], scratch_low[u])
            scratch_high[j] = max(scratch_high[j], scratch_high[u])
    return min(low, scratch_low[0]), max(high, scratch_high[0])

@int_jit
def asym(w, high, codes, scale, zp, err, scratch_low, scratch_high):
    groups, g = w.shape
    eps = np.float32(_EPS)
    zero = np.float32(0.0)
    fhigh = np.float32(high)
    for r in range(groups):
        lo, hi = row_min_max(w, r, zero, zero, scratch_low, scratch_high)
        s = (hi - lo) / fhigh
        if abs(s) < eps:
            s = eps
        z = zero - np.float32(np.rint(lo / s))
        z = min(max(z, zero), fhigh)
        scale[r] = s
        zp[r] = np.uint8(z)
        for k in range(g):
            v = w[r, k]
            q = np.float32(np.rint(v / s + z))
            q = min(max(q, zero), fhigh)
            codes[r, k] = np.uint8(np.int32(q))
            err[r, k] = (q - z) * s - v

@int_jit
def sym(w, num_bits, codes, scale, err, scratch_low, scratch_high):
    groups, g = w.shape
    eps = np.float32(_EPS)
    half = np.float32(2 ** (num_bits - 1))
    low = -half
    high = half - np.float32(1.0)
    for r in range(groups):
        mn, mx = row_min_max(w, r, w[r, 0], w[r, 0], scratch_low, scratch_high)
        amin = abs(mn)
        s = amin if amin >= mx else -mx
        s = s / half
        if abs(s) < eps:
            s = eps
        scale[r] = s
        for k in range(g):
            v = w[r, k]
            q = np.float32(np.rint(v / s))
            q = min(max(q, low), high)
            codes[r, k] = np.uint8(np.int32(q))
            err[r, k] = q * s - v


@float_jit
def e4m3_magnitude(a, bits):
    """E4M3 magnitude code of ``a = |x|`` (its float32 bits ``bits``): round to float16, then to E4M3."""
    if bits < 0x38800000:  # below float16's smallest normal: its subnormal grid, 2^-24
        h = np.int64(np.rint(a * np.float32(16777216.0)))
    else:  # float16 normal: keep 10 of 23 mantissa bits, ties to even
        h = (np.int64(bits) >> 13) - (112 << 10)
        rem = bits & 0x1FFF
        if rem > 0x1000 or (rem == 0x1000 and (h & 1)):
            h += 1
    if h < 0x2400:  # below E4M3's smallest normal 2^-6: its subnormal grid, 2^-9 (exact in float64)
        value = h * 2.0**-24 if h < 0x400 else (1024 + (h & 0x3FF)) * 2.0 ** ((h >> 10) - 25)
        return np.int64(np.rint(value * 512.0))
    code = (h - (8 << 10)) >> 7  # rebias 15 -> 7, keep 3 of 10 mantissa bits, ties to even
    rem = h & 0x7F
    if rem > 0x40 or (rem == 0x40 and (code & 1)):
        code += 1
    return min(code, 0x7F)  # above 448 (from 464 on): NaN

@float_jit
def encode_rows(w, sign_bits, kind, scale_rule, max_value, thresholds, values, codes, scale, err, row):
    """Group scale, codes and error of each row of ``w`` (see the module docstring); ``row``: scratch [g]."""
    groups, g = w.shape
    row_bits = row.view(np.uint32)
    eps = np.float32(_EPS)
    one = np.float32(1.0)
    n = thresholds.size
    for r in range(groups):
        top = np.float32(0.0)
        for k in range(g):
            top = max(top, abs(w[r, k]))
        if scale_rule == SCALE_GIVEN:
            s = scale[r]
        elif scale_rule == SCALE_SIGNED:
            lo, hi = w[r, 0], w[r, 0]
            for k in range(g):
                lo = min(lo, w[r, k])
                hi = max(hi, w[r, k])
            s = (lo if abs(lo) > hi else hi) / max_value
            if abs(s) < eps:
                s = eps
        elif scale_rule == SCALE_CODEBOOK:
            s = top / max_value
            if abs(s) < eps:
                s = eps
        else:
            s = top if top >= eps else eps
            if max_value != one:
                s = s / max_value
            if scale_rule == SCALE_MX:
                m, e = math.frexp(np.float64(s))
                exp = min(max(e - 1 if m == 0.5 else e, -127), 127)
                s = np.float32(math.ldexp(1.0, exp))
        scale[r] = s
        for k in range(g):
            row[k] = w[r, k] / s
        for k in range(g):
            x = row[k]
            sign = np.int64(sign_bits[r, k] >> np.uint32(31))
            if kind == KIND_E4M3:
                c = e4m3_magnitude(abs(x), np.int64(row_bits[k] & np.uint32(0x7FFFFFFF))) | (sign << 7)
            elif kind == KIND_E2M1:
                a = abs(x)
                c = np.int64(0)
                for i in range(n):
                    c += a >= thresholds[i]
                c |= sign << 3
            else:
                c = np.int64(0)
                for i in range(n):
                    c += x >= thresholds[i]
            codes[r, k] = np.uint8(c)
            err[r, k] = values[c] * s - w[r, k]


@int_jit
def pack_sub_byte(values, bits, offset, out):
    """``values + offset`` (uint8, wrapping) in OpenVINO's u2 or u3 layout (see :mod:`.bitpack`); ``out`` is sized.

    Each output byte is computed in registers and written once: a run of 4
    values per byte for u2, of 8 values per 3 bytes for u3; the short last
    run is padded with zero values (not ``offset``).
    """
    n = values.size
    per = 4 if bits == 2 else 8
    full = n // per
    off = np.uint8(offset)
    if bits == 2:
        for r in range(full):
            f = 4 * r
            out[r] = (((values[f] + off) & np.uint8(3)) | (((values[f + 1] + off) & np.uint8(3)) << np.uint8(2))
                      | (((values[f + 2] + off) & np.uint8(3)) << np.uint8(4))
                      | (((values[f + 3] + off) & np.uint8(3)) << np.uint8(6)))
    else:
        for r in range(full):
            f = 8 * r
            v0 = (values[f] + off) & np.uint8(7)
            v1 = (values[f + 1] + off) & np.uint8(7)
            v2 = (values[f + 2] + off) & np.uint8(7)
            v3 = (values[f + 3] + off) & np.uint8(7)
            v4 = (values[f + 4] + off) & np.uint8(7)
            v5 = (values[f + 5] + off) & np.uint8(7)
            v6 = (values[f + 6] + off) & np.uint8(7)
            v7 = (values[f + 7] + off) & np.uint8(7)
            t = np.uint8(3)
            out[3 * r] = ((v0 & t) << np.uint8(6)) | ((v1 & t) << np.uint8(4)) | ((v2 & t) << np.uint8(2)) | (v3 & t)
            out[3 * r + 1] = ((v4 & t) << np.uint8(6)) | ((v5 & t) << np.uint8(4)) | ((v6 & t) << np.uint8(2)) | (v7 & t)
            out[3 * r + 2] = (((v0 >> np.uint8(2)) << np.uint8(7)) | ((v1 >> np.uint8(2)) << np.uint8(6))
                              | ((v2 >> np.uint8(2)) << np.uint8(5)) | ((v3 >> np.uint8(2)) << np.uint8(4))
                              | ((v4 >> np.uint8(2)) << np.uint8(3)) | ((v5 >> np.uint8(2)) << np.uint8(2))
                              | ((v6 >> np.uint8(2)) << np.uint8(1)) | (v7 >> np.uint8(2)))
    if full * per < n:  # the short last run, padded with zero values
        tail = np.zeros(per, dtype=np.uint8)
        for k in range(n - full * per):
            tail[k] = values[full * per + k] + off
        rest = out[full * (1 if bits == 2 else 3):]
        pack_sub_byte_tail(tail, bits, rest)


@int_jit
def pack_sub_byte_tail(tail, bits, out):
    """One run (4 values for u2, 8 for u3, already offset) into its 1 or 3 bytes."""
    if bits == 2:
        out[0] = np.uint8(0)
        for k in range(4):
            out[0] |= (tail[k] & np.uint8(3)) << np.uint8(2 * k)
        return
    out[0] = np.uint8(0)
    out[1] = np.uint8(0)
    out[2] = np.uint8(0)
    for k in range(8):
        v = tail[k] & np.uint8(7)
        out[k >> 2] |= (v & np.uint8(3)) << np.uint8(6 - 2 * (k & 3))
        out[2] |= (v >> np.uint8(2)) << np.uint8(7 - k)

@int_jit
def _grid_point_error(x, s, z, low, high):
    """``|(clip(rint(x / s + z)) - z) * s - x|`` in float32, as float64 (:func:`clipping._extreme_error`)."""
    q = min(max(np.rint(x / s + z), low), high)
    return abs(np.float64((q - z) * s - x))


@int_jit
def _grid_row_error(w, r, s, z, low, high):
    """``sum ((clip(rint(w / s + z)) - z) * s - w)^2`` over row ``r``: float32 terms, float64 squares, in 8 lanes."""
    lanes = np.zeros(8, dtype=np.float64)  # 8 running sums, element k into lane k % 8: independent chains
    for k in range(w.shape[1]):
        q = min(max(np.rint(w[r, k] / s + z), low), high)
        e = np.float64((q - z) * s - w[r, k])
        lanes[k % 8] += e * e
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


@int_jit
def grid_search(w, steps, unfit, rtn_scale, rtn_zp, low, high, zero_shifts, scale_out, zp_out):
    """:func:`optimum_wc.quant.clipping.mse_grid_params` for each row of ``w`` (see there), element for element."""
    for r in range(w.shape[0]):
        s0 = rtn_scale[r]
        z0 = rtn_zp[r]
        best = _grid_row_error(w, r, s0, z0, low, high)
        w_min = w[r, 0]
        w_max = w[r, 0]
        for k in range(1, w.shape[1]):
            w_min = min(w_min, w[r, k])
            w_max = max(w_max, w[r, k])
        half = abs(np.float64(s0)) / 2.0
        bound_min = max(half, _grid_point_error(w_min, s0, z0, low, high)) * (1 + 1e-6)
        bound_max = max(half, _grid_point_error(w_max, s0, z0, low, high)) * (1 + 1e-6)
        lo = min(w_min, np.float32(0))
        best_s = s0
        best_z = z0
        for j in range(steps.shape[1]):
            if unfit[r, j]:
                continue
            s = steps[r, j]
            centre = np.rint(-lo / s)
            for d in zero_shifts:
                z = min(max(centre + d, np.float32(0)), high) if zero_shifts.size > 1 else np.float32(0)
                if _grid_point_error(w_min, s, z, low, high) > bound_min:
                    continue
                if _grid_point_error(w_max, s, z, low, high) > bound_max:
                    continue
                err = _grid_row_error(w, r, s, z, low, high)
                if err < best:
                    best = err
                    best_s = s
                    best_z = z
        scale_out[r] = best_s
        zp_out[r] = best_z
