"""Every weight format in the IR: NNCF's bytes, constant types, the CPU plugin's fused kernels, logits.

The parity tests call ``nncf.compress_weights`` as the reference (never the
product): our data-free IR must hold the same bytes, on a model whose
weights are below NNCF's 10,000-element cut-off (its NumPy path) and one
above it (its OpenVINO-compiled path).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import openvino as ov
import pytest

from conftest import _float_ir, build_llama, run_logits
from optimum_wc import WeightCompressionConfig, compress_model
from optimum_wc.config import CompressWeightsMode
from optimum_wc.ir.rt_info import read_rt_info
from optimum_wc.quant.formats import format_of

CODEBOOK = [-4, -2.5, -1.5, -1, -0.6, -0.3, -0.1, 0, 0.1, 0.3, 0.6, 1, 1.5, 2.5, 4, 6]
DATA_FREE = {
    "int3_sym": dict(mode="int3_sym", group_size=32),
    "int2_sym": dict(mode="int2_sym", group_size=32),
    "nf4": dict(mode="nf4", group_size=32),
    "nf4_g64_r0.5": dict(mode="nf4", group_size=64, ratio=0.5),
    "fp4": dict(mode="fp4", group_size=32),
    "fp4_r0.6": dict(mode="fp4", group_size=32, ratio=0.6),
    "fp8_e4m3": dict(mode="fp8_e4m3", group_size=32),
    "mxfp4": dict(mode="mxfp4"),
    "mxfp4_r0.6_all": dict(mode="mxfp4", ratio=0.6, all_layers=True),
    "mxfp8_e4m3": dict(mode="mxfp8_e4m3"),
    "nvfp4": dict(mode="nvfp4"),
    "nvfp4_all": dict(mode="nvfp4", all_layers=True),
    "cb4": dict(mode="cb4"),
    "cb4_g32": dict(mode="cb4", group_size=32),
    "codebook": dict(mode="codebook", codebook=CODEBOOK),
}


@pytest.fixture(scope="module")
def llama128_ir(tmp_path_factory):
    """Hidden 128, intermediate 384: its MLP weights have 49,152 elements (NNCF's compiled path)."""
    root = tmp_path_factory.mktemp("llama128")
    return _float_ir(build_llama(root / "model", hidden=128, intermediate=384), root / "ir")


def nncf_compress(model, kwargs):
    import nncf

    kwargs = dict(kwargs)
    kwargs["mode"] = nncf.CompressWeightsMode(kwargs["mode"])
    codebook = kwargs.pop("codebook", None)
    if codebook is not None:
        kwargs["advanced_parameters"] = nncf.AdvancedCompressionParameters(codebook=np.array(codebook, np.float32))
    return nncf.compress_weights(model, **kwargs)


@pytest.mark.parametrize("ir_name", ["llama_ir", "llama128_ir"])
@pytest.mark.parametrize("name", sorted(DATA_FREE))
def test_data_free_ir_equals_nncf_byte_for_byte(name, ir_name, request, read_ir, tmp_path):
    xml = request.getfixturevalue(ir_name)
    ov.save_model(nncf_compress(read_ir(xml), DATA_FREE[name]), tmp_path / "nncf.xml", compress_to_fp16=False)
    ov.save_model(compress_model(read_ir(xml), WeightCompressionConfig(**DATA_FREE[name])), tmp_path / "ours.xml",
                  compress_to_fp16=False)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "nncf.bin").read_bytes()


def code_constants(model) -> Counter:
    """Element types of each compressed weight's codes (or codebook indices) and look-up table, by count."""
    constants = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    _, layers = read_rt_info(model)
    found = Counter()
    for layer in layers:
        for name in (layer["name"], layer["name"] + "_nncf_codebook_idxs"):
            if name in constants and constants[name].get_element_type() != ov.Type.f32:
                found[constants[name].get_element_type().get_type_name()] += 1
    return found


@pytest.mark.parametrize("mode", [m for m in CompressWeightsMode if not m.is_int8])
def test_constants_per_element_type(mode, llama_ir, read_ir):
    """15 MatMuls + the embedding: 14 in the primary format, the embedding and lm_head in the backup."""
    kwargs = {"codebook": CODEBOOK} if mode is CompressWeightsMode.CODEBOOK else {}
    model = compress_model(read_ir(llama_ir), WeightCompressionConfig(mode=mode, group_size=None if mode.fixed_group_size else 32, **kwargs))
    fmt = format_of(mode)
    backup = format_of(CompressWeightsMode(WeightCompressionConfig(mode=mode, **kwargs).effective_backup_mode.value))
    expected = Counter({fmt.code_type: 14}) + Counter({backup.code_type: 2})
    if fmt.codebook:  # the look-up table: E4M3 for CB4 and adaptive tables, float32 (not counted) for a given one
        expected += Counter({} if mode is CompressWeightsMode.CODEBOOK else {"f8e4m3": 14})
    assert code_constants(model) == expected
    scales = Counter(op.get_element_type().get_type_name() for op in model.get_ops()
                     if op.get_type_name() == "Constant" and op.get_friendly_name().endswith("/scale"))
    assert scales[fmt.scale_type] >= 14


# The CPU plugin (OpenVINO 2026.4) runs these code types inside FullyConnected; the others (u3, f8e4m3, codebook
# look-ups) it decompresses once when the model loads, for NNCF's IR as for ours (README's format table).
FUSED_IN_FC = {"u8", "i8", "u4", "i4", "u2", "nf4", "f4e2m1"}


@pytest.mark.parametrize("mode", list(CompressWeightsMode))
def test_cpu_plugin_runs_compressed_weights(mode, llama_ir, read_ir):
    kwargs = {"codebook": CODEBOOK} if mode is CompressWeightsMode.CODEBOOK else {}
    if not mode.is_int8:
        kwargs.update(group_size=None if mode.fixed_group_size else 32, all_layers=True)
    model = compress_model(read_ir(llama_ir), WeightCompressionConfig(mode=mode, **kwargs))
    fmt = format_of(mode)
    code_type = fmt.code_type
    runtime = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
    weights = Counter()
    for op in runtime.get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str) == "FullyConnected":
            weights[op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)] += 1
    if code_type in FUSED_IN_FC and not fmt.codebook:
        assert weights == Counter({code_type: 15}), weights
        assert not any(op.get_rt_info()["layerType"].astype(str) == "Multiply" for op in runtime.get_ordered_ops())
    else:  # decompressed at load: a float constant, no per-inference decompression node
        assert sum(weights.values()) == 15 and set(weights) <= {"f32", "bf16", "f16"}, weights


# About 1.5x what each format measures here (int2 0.39, int3 0.21, the 4-bit formats 0.10-0.18, FP8 0.04-0.05).
LOGIT_BOUNDS = {
    "int3_sym": 0.32, "int2_sym": 0.6, "nf4": 0.15, "fp4": 0.18, "fp8_e4m3": 0.065, "mxfp4": 0.23,
    "mxfp8_e4m3": 0.075, "nvfp4": 0.17, "cb4": 0.17, "codebook": 0.28,
}


@pytest.mark.parametrize("name", sorted(LOGIT_BOUNDS))
def test_logits_stay_close_to_float(name, llama_ir, read_ir):
    """Relative L2 error of the logits on random tiny weights, per format (tighter for the 8-bit ones)."""
    kwargs = dict(DATA_FREE[name])
    ids = np.random.default_rng(0).integers(3, 500, size=(2, 24)).astype(np.int64)
    ref = run_logits(read_ir(llama_ir), ids)
    model = compress_model(read_ir(llama_ir), WeightCompressionConfig(**kwargs))
    out = run_logits(model, ids, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref - ref.mean())
    assert 0 < rel < LOGIT_BOUNDS[name], rel
    _, layers = read_rt_info(model)
    assert {layer["mode"] for layer in layers if layer["ratio_defining"]} == {kwargs["mode"]}
