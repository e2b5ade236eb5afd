"""Bit packing: our IR's 4-bit layout, and the int32 layouts of GPTQ and AWQ checkpoints (pure NumPy).

* OpenVINO u4/i4 (and nf4, f4e2m1): two values per byte, element 0 in the low
  nibble; u2: four per byte, element 0 in the low bits; u3: see :func:`pack_u3`.
* GPTQ ``qweight`` int32 ``[n / p, m]`` (``p = 32 / bits``), packed along the
  rows: row ``i = r * p + k`` sits at bits ``[bits k, bits k + bits)`` of
  packed row ``r``, low bits first; ``qzeros`` int32 ``[n, m / p]`` the same
  along the columns.
* AWQ GEMM int32 ``[n, m / 8]``: nibble ``k`` of packed column ``c`` holds
  column ``8 c + AWQ_ORDER[k]``, ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``.

Every unpacker here has its packer beside it in the tests, written
independently after AutoGPTQ's and AutoAWQ's ``pack`` methods.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of a packed AWQ int32 holds output channel 8c + AWQ_ORDER[k]
AWQ_REVERSE_ORDER = tuple(int(i) for i in np.argsort(AWQ_ORDER))  # (0, 4, 1, 5, 2, 6, 3, 7)


_PACK_CHUNK = 1 << 16  # byte pairs per step: the temporaries stay small (reused heap memory, in cache)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack 4-bit values two per byte, element 0 in the low nibble (OpenVINO's u4/i4 layout)."""
    flat = values.reshape(-1).view(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    if sys.byteorder != "little":
        return ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8)
    pairs = flat.view(np.uint16)  # element 2k is the low byte of pair k
    out = np.empty(pairs.size, dtype=np.uint8)
    for start in range(0, pairs.size, _PACK_CHUNK):
        p = pairs[start : start + _PACK_CHUNK]
        high = p >> 4
        high &= 0x00F0
        high |= p & 0x000F
        out[start : start + _PACK_CHUNK] = high
    return out


def pack_crumbs(values: np.ndarray) -> np.ndarray:
    """Pack 2-bit values four per byte, element 0 in the lowest two bits (OpenVINO's u2 layout)."""
    flat = values.reshape(-1).view(np.uint8) & np.uint8(3)
    flat = np.concatenate([flat, np.zeros(-flat.size % 4, dtype=np.uint8)]).reshape(-1, 4)
    return (flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)).astype(np.uint8)


def pack_u3(values: np.ndarray) -> np.ndarray:
    """Pack 3-bit values eight per three bytes (OpenVINO's u3 layout).

    For each run of 8 values ``v0..v7``: byte 0 holds the low two bits of
    ``v0..v3``, byte 1 those of ``v4..v7`` (first value in the top bits), and
    byte 2 the high bit of ``v0..v7`` (``v0`` in bit 7).  A short last run is
    padded with zeros.
    """
    flat = values.reshape(-1).view(np.uint8) & np.uint8(7)
    runs = np.concatenate([flat, np.zeros(-flat.size % 8, dtype=np.uint8)]).reshape(-1, 8)
    low, high = runs & np.uint8(3), runs >> np.uint8(2)
    out = np.empty((runs.shape[0], 3), dtype=np.uint8)
    out[:, 0] = (low[:, 0] << 6) | (low[:, 1] << 4) | (low[:, 2] << 2) | low[:, 3]
    out[:, 1] = (low[:, 4] << 6) | (low[:, 5] << 4) | (low[:, 6] << 2) | low[:, 7]
    out[:, 2] = np.bitwise_or.reduce(high << np.arange(7, -1, -1, dtype=np.uint8), axis=1)
    return out.reshape(-1)


def pack_bits(values: np.ndarray, bits: int, offset: int = 0) -> np.ndarray:
    """``values`` (uint8 codes) in OpenVINO's packed layout for ``bits``-bit element types (2, 3, 4 or 8).

    ``offset`` is added to every value first (wrapping in a byte: int8 levels
    ``[-2^(b-1), 2^(b-1))`` plus ``2^(b-1)`` become the unsigned codes of
    int3/int2).  u3 and u2 are packed by a numba kernel when numba is there
    (one pass; the NumPy packers above are the reference it is tested against).
    """
    if offset:
        if bits in (2, 3) and _numba_packer() is not None:
            flat = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
            out = np.empty(packed_size(flat.size, bits), dtype=np.uint8)
            _numba_packer()(flat, bits, offset, out)
            return out
        values = np.ascontiguousarray(values).view(np.uint8) + np.uint8(offset)
    if bits == 8:
        return np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    packer = {4: pack_nibbles, 3: pack_u3, 2: pack_crumbs}.get(bits)
    if packer is None:
        raise ValueError(f"no packed layout for {bits}-bit values (2, 3, 4 or 8)")
    if bits in (2, 3) and _numba_packer() is not None:
        flat = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        out = np.empty(packed_size(flat.size, bits), dtype=np.uint8)
        _numba_packer()(flat, bits, 0, out)
        return out
    return packer(np.ascontiguousarray(values))


@functools.cache
def _numba_packer():
    try:
        from .numba_kernels import pack_sub_byte
    except ImportError:
        return None
    return pack_sub_byte


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take in OpenVINO's layout (u3: three bytes per run of eight)."""
    if bits == 3:
        return 3 * ((count + 7) // 8)
    return (count * bits + 7) // 8


def _values_per_word(bits: int) -> int:
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"cannot unpack {bits}-bit values from int32 (need 2, 3, 4 or 8 bits)")
    return 32 // bits


def unpack_bitstream(words: np.ndarray, bits: int) -> np.ndarray:
    """uint32 ``[w, m]`` read as ``m`` little-endian bit streams down the rows -> uint8 ``[32 w / bits, m]``.

    Value ``k`` of a column is bits ``[bits k, bits k + bits)`` of its stream
    (word ``r`` holding stream bits ``[32 r, 32 r + 32)``): for 2, 4 and 8 bits,
    value ``r p + k`` sits at bits ``[bits k, bits k + bits)`` of word ``r``;
    for 3 bits this is GPTQ's layout of 32 values in 3 words, values 10 and 21
    straddling two words.
    """
    count = words.shape[0] * 32 // bits
    stream = np.unpackbits(np.ascontiguousarray(words.T).astype("<u4").view(np.uint8), axis=1, bitorder="little")
    values = stream[:, : count * bits].reshape(words.shape[1], count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    return np.ascontiguousarray((values * weights).sum(axis=2, dtype=np.uint8).T)


def unpack_along_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack int32 ``[n / p, m]`` into uint8 ``[n, m]`` (``p = 32 / bits``; GPTQ ``qweight``).

    Row ``i = r * p + k`` of the result is bits ``[bits k, bits k + bits)`` of
    packed row ``r`` (low bits first); 3 bits: see :func:`unpack_bitstream`.
    """
    per_word = _values_per_word(bits)
    words = np.ascontiguousarray(packed).view(np.uint32)
    if bits == 3:
        return unpack_bitstream(words, 3)
    out = np.empty((words.shape[0] * per_word, words.shape[1]), dtype=np.uint8)
    mask = np.uint32(2**bits - 1)
    for k in range(per_word):
        out[k::per_word] = (words >> np.uint32(bits * k)) & mask
    return out


def unpack_along_columns(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack int32 ``[n, m / p]`` into uint8 ``[n, m]`` (``p = 32 / bits``; GPTQ ``qzeros``).

    Column ``j = c * p + k`` of the result is bits ``[bits k, bits k + bits)``
    of packed column ``c`` (low bits first); 3 bits: a bit stream along each row.
    """
    per_word = _values_per_word(bits)
    words = np.ascontiguousarray(packed).view(np.uint32)
    if bits == 3:
        return np.ascontiguousarray(unpack_bitstream(np.ascontiguousarray(words.T), 3).T)
    out = np.empty((words.shape[0], words.shape[1] * per_word), dtype=np.uint8)
    mask = np.uint32(2**bits - 1)
    for k in range(per_word):
        out[:, k::per_word] = (words >> np.uint32(bits * k)) & mask
    return out


def unpack_awq(packed: np.ndarray) -> np.ndarray:
    """Unpack AWQ GEMM int32 ``[n, m / 8]`` into uint8 ``[n, m]`` (``qweight`` and ``qzeros``).

    Nibble ``k`` (bits ``[4k, 4k + 4)``) of packed column ``c`` holds column
    ``8 c + AWQ_ORDER[k]`` with ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``.
    """
    natural = unpack_along_columns(packed, 4)  # column 8c + k holds nibble k
    n, m = natural.shape
    return np.ascontiguousarray(natural.reshape(n, m // 8, 8)[:, :, list(AWQ_REVERSE_ORDER)].reshape(n, m))
