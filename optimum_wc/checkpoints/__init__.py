"""Pre-quantized checkpoints (GPTQ, AWQ): reading only, never an IR.

``formats`` (which format a folder holds), ``layers`` (one packed layer ->
exact integer codes, scales and zero points), ``reader`` (the checkpoint's
quantized layers, checked against its config), ``staging`` (a float
checkpoint of the rest, and a model with placeholder weights, for the
exporter).  Turning these into an IR is :mod:`optimum_wc.export.prequantized`.
"""
