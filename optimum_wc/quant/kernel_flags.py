"""The integer flags the float-format kernel takes (shared by its wrapper and the numba code; no numba here)."""

# How a row's scale is found: the format's rule, MX's power of two, a codebook's, the caller's, or a signed
# codebook scale (the row's largest-magnitude weight, sign kept, over the table's top entry).
SCALE_PLAIN, SCALE_MX, SCALE_CODEBOOK, SCALE_GIVEN, SCALE_SIGNED = 0, 1, 2, 3, 4
# How an element is encoded: a count of thresholds (NF4, codebooks), E2M1, or E4M3.
KIND_THRESHOLDS, KIND_E2M1, KIND_E4M3 = 0, 1, 2
