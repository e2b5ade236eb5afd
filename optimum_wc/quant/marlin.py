"""The Marlin layout of 4-bit weights (AutoGPTQ ``checkpoint_format: "marlin"``, AutoAWQ ``version: "marlin"``), undone.

Marlin stores a symmetric 4-bit linear ``W [out, in]`` (codes ``q`` in 0..15,
value ``s * (q - 8)``) for its GPU kernel's tensor-core fragments, after
AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_marlin.py`` (``_get_perms``,
``QuantLinear.pack``):

* ``B`` (AutoAWQ: ``qweight``) int32 ``[in / 16, 2 out]``: the codes ``[in, out]``
  cut into 16 x 16 tiles, taken tile-row by tile-row (``[in / 16, out * 16]``),
  each run of 1024 values shuffled by ``perm``, then packed 8 per word, low
  nibble first;
* ``s`` (AutoAWQ: ``scales``) float16 ``[G, out]``: flattened and shuffled in runs
  of 64 by ``scale_perm`` (several groups) or of 32 by ``scale_perm_single``
  (one group per channel).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def marlin_perms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(perm, scale_perm, scale_perm_single)`` of AutoGPTQ's ``_get_perms``."""
    perm = []
    for i in range(32):
        col = i // 4
        first = [16 * row + col + 8 * block for block in (0, 1)
                 for row in (2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1)]
        for j in range(4):
            perm.extend(p + 256 * j for p in first)
    interleave = np.array([0, 2, 4, 6, 1, 3, 5, 7])
    perm_array = np.array(perm).reshape(-1, 8)[:, interleave].ravel()
    scale_perm = np.array([i + 8 * j for i in range(8) for j in range(8)])
    scale_perm_single = np.array([2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)])
    return perm_array, scale_perm, scale_perm_single


def marlin_shape_problem(in_features: int, out_features: int, n_groups: int) -> str | None:
    """Why a layer cannot be in the Marlin layout (its tiles and permutation runs do not fit), or None."""
    if in_features <= 0 or out_features <= 0 or in_features % 16 or (16 * out_features) % 1024:
        return (f"Marlin needs a positive number of input channels divisible by 16 and of output channels divisible "
                f"by 64 (got {in_features}, {out_features})")
    if (n_groups * out_features) % (64 if n_groups > 1 else 32):
        return f"Marlin's scale permutation needs groups x outputs divisible by 64 (got {n_groups} x {out_features})"
    return None


def unpack_marlin(packed: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes uint8 ``[out, in]`` and scales ``[G, out]`` (natural order) of a Marlin ``B`` / ``s`` pair."""
    perm, scale_perm, scale_perm_single = marlin_perms()
    rows, width = packed.shape
    in_features, out_features = rows * 16, width // 2
    words = np.ascontiguousarray(packed).view(np.uint32)
    tiled = np.empty((rows, width * 8), dtype=np.uint8)
    for k in range(8):
        tiled[:, k::8] = (words >> np.uint32(4 * k)) & np.uint32(0xF)
    tiled = tiled.reshape(-1, perm.size)[:, np.argsort(perm)].reshape(rows, width * 8)
    codes = tiled.reshape(rows, out_features // 16, 16, 16).transpose(1, 3, 0, 2)  # [out/16, 16, in/16, 16]
    codes = np.ascontiguousarray(codes.reshape(out_features, in_features))
    n_groups = scales.shape[0]
    inverse = np.argsort(scale_perm if n_groups > 1 else scale_perm_single)
    natural = np.asarray(scales).reshape(-1, inverse.size)[:, inverse].reshape(n_groups, out_features)
    return codes, np.ascontiguousarray(natural)
