"""The maths of weight compression, as small pure NumPy functions: no OpenVINO here.

``formats`` (the table of every mode's storage: code and scale element
types, zero point, look-up table), ``lowering`` (quantize / dequantize,
NNCF's integer formulas; dispatches the float formats), ``float_lowering``
(NF4, FP4, FP8, MX, NVFP4 and codebook group scales and codes),
``minifloat`` (E2M1 / E4M3 / NF4 / E8M0 element encodings), ``kernels`` and
``float_kernels`` (the same round to nearest fused in numba, tested
byte-equal), ``bitpack`` (u4 / u3 / u2 and GPTQ/AWQ int32 layouts),
``codebook_estimation`` (adaptive codebooks), ``scale_estimation``,
``gptq``, ``lora`` (LoRA correction adapters), ``awq_search`` (AWQ's
smoothing-scale search).
"""
