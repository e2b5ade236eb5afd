"""The maths of weight compression, as small pure NumPy functions: no OpenVINO here.

``lowering`` (quantize / dequantize, NNCF's formulas), ``bitpack`` (u4 and
GPTQ/AWQ int32 layouts), ``scale_estimation``, ``gptq``, ``lora`` (LoRA
correction adapters), ``awq_search`` (AWQ's smoothing-scale search).
"""
