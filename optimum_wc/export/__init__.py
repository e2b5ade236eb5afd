"""Checkpoint -> IR: the float export, the pre-quantized export, and the pipeline that chooses between them.

``float_ir`` (optimum-intel's exporter, never NNCF), ``prequantized``
(GPTQ/AWQ integer weights kept exactly), ``pipeline`` (the one dispatch
point, and the folder-to-folder export and compression).
"""
