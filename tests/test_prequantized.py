"""Pre-quantized GPTQ / AWQ checkpoints: the IR keeps the checkpoint's integers exactly (issue #6).

Checkpoints are written by ``tests/gptq_writer.py`` from planted integer codes;
no GPTQ/AWQ library is involved.  Most layouts are checked by applying the
packed weights to the shared float IR of the same tiny Llama (what the
exporter path does after its float export); a few tests run the whole export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

import conftest
from conftest import constant_codes
from gptq_writer import (
    build_llama_with_bias,
    edit_config,
    edit_tensors,
    pack_awq,
    pack_gptq_columns,
    pack_gptq_rows,
    reference_logits,
    write_checkpoint,
)
from optimum_wc import ExportError, WeightCompressionConfig
from optimum_wc.config import CompressWeightsMode
from optimum_wc.checkpoints import formats as formats_module
from optimum_wc.checkpoints.formats import PrequantizedFormat, detect_prequantized
from optimum_wc.checkpoints.layers import convert_gptq_layer
from optimum_wc.checkpoints.reader import PrequantizedCheckpoint
from optimum_wc.export.prequantized import apply_prequantized
from optimum_wc.ir.rt_info import read_prequantized_info
from optimum_wc.quant.bitpack import unpack_along_columns, unpack_along_rows, unpack_awq

ROOT = Path(__file__).resolve().parents[1]
IDS = np.random.default_rng(0).integers(3, 500, size=(2, 16)).astype(np.int64)
OV_TYPES = {ov.Type.u4: "u4", ov.Type.i4: "i4", ov.Type.u8: "u8", ov.Type.i8: "i8"}
GPTQ_LIBS = ("auto_gptq", "gptqmodel", "awq", "optimum.gptq", "exllama", "exllamav2", "exllama_kernels", "marlin")
CUDA_LIBS = ("cuda", "pynvml")  # `import torch` itself tries these (guarded): blocked, never loaded


def run_logits(model, input_ids: np.ndarray = IDS) -> np.ndarray:
    """conftest.run_logits, with the CPU plugin's dynamic activation quantization off.

    With it on (the default for int4/int8 fully connected layers, even under an
    f32 precision hint), activations are quantized to 8 bits at run time.
    """
    return conftest.run_logits(model, input_ids, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})


def check_ir_matches_planted(model, planted, bits: int, sym: bool) -> None:
    """Codes, f16 scales and zero points in the IR are the planted ones; dequantized weights equal bit for bit."""
    consts = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    gathers = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Gather"}
    for prefix, p in planted.items():
        name = f"self.{prefix}.weight"
        if name not in consts:  # float16 export: optimum-intel's patched name
            name = f"self.{prefix}._openvino_orig_weight"
        const = consts[name]
        n_out, n_in = p.codes.shape
        group_size = int(np.sum(p.g_idx == 0))  # the first group is whole (GPTQ: only the last may be partial)
        layer_bits = p.bits or bits
        expected_type = ("i" if sym else "u") + ("4" if layer_bits <= 4 else "8")  # 2/3-bit codes in 4-bit constants
        assert OV_TYPES[const.get_element_type()] == expected_type, (prefix, const.get_element_type())
        natural = np.array_equal(p.g_idx, np.arange(n_in) // group_size)
        perm = np.arange(n_in) if natural else np.argsort(p.g_idx, kind="stable")
        assert (f"{name}/input_gather" in gathers) == (not natural)
        if not natural:
            indices = consts[f"{name}/input_gather/indices"].get_data()
            assert np.array_equal(indices, perm)
        codes = constant_codes(const).reshape(n_out, n_in)
        scale = consts[f"{name}/scale"].get_data()
        assert scale.dtype == np.float16
        n_groups = scale.size // n_out  # ragged groups: equal sub-groups of gcd(in, group size) channels
        owner = (np.arange(n_groups) * (n_in // n_groups)) // group_size
        assert n_groups == p.scales.shape[0] or n_in % group_size
        assert np.array_equal(scale.reshape(n_out, n_groups), p.scales.T[:, owner])  # same f16 bits
        if sym:
            assert f"{name}/zero_point" not in consts
            assert np.array_equal(codes + 2 ** (layer_bits - 1), p.codes[:, perm])
            zp = np.full((n_out, n_groups), 2 ** (layer_bits - 1))
            codes = codes + 2 ** (layer_bits - 1)
        else:
            zp = constant_codes(consts[f"{name}/zero_point"]).reshape(n_out, n_groups)
            assert np.array_equal(codes, p.codes[:, perm])
            assert np.array_equal(zp, p.zeros.T[:, owner])
        # the IR's decompression (f16 Subtract then Multiply) against the checkpoint's own dequantization, bit for bit
        levels = (codes.reshape(n_out, n_groups, -1) - zp[:, :, None]).astype(np.float16)
        grouped = levels * scale.reshape(n_out, n_groups, 1)
        ir_weight = np.empty((n_out, n_in), dtype=np.float16)
        ir_weight[:, perm] = grouped.reshape(n_out, n_in)
        assert np.array_equal(ir_weight.view(np.uint16), p.dequantized_f16().view(np.uint16))


def assert_logits_close(out: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < rtol, err


# --------------------------------------------------------------------------- pure NumPy layouts


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpackers_invert_the_reference_packers(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=(64, 64 if bits == 3 else 48))  # 3 bits: runs of 32 values
    assert np.array_equal(unpack_along_rows(pack_gptq_rows(values, bits), bits), values)
    assert np.array_equal(unpack_along_columns(pack_gptq_columns(values, bits), bits), values)
    if bits == 4:
        assert np.array_equal(unpack_awq(pack_awq(values)), values)
        # AWQ's order is not the natural one
        assert not np.array_equal(unpack_along_columns(pack_awq(values), 4), values)


def test_known_words():
    # GPTQ qweight: input channel k of a column sits at bits [4k, 4k + 4), low bits first
    word = np.array([[0x76543210]], dtype=np.uint32).view(np.int32)
    assert unpack_along_rows(word, 4)[:, 0].tolist() == list(range(8))
    # AWQ: nibble k holds output channel [0, 2, 4, 6, 1, 3, 5, 7][k]
    word = np.array([[0x75316420]], dtype=np.uint32).view(np.int32)
    assert unpack_awq(word)[0].tolist() == list(range(8))


def _fmt(**kw) -> PrequantizedFormat:
    base = dict(method="gptq", bits=4, group_size=4, sym=False, desc_act=False, checkpoint_format="gptq", source="test")
    return PrequantizedFormat(**{**base, **kw})


def test_v1_zero_point_of_sixteen_is_kept_exactly_with_8_bit_codes():
    """A v1 stored nibble 15 means zero point 16 (AutoGPTQ's kernels add 1 after unpacking): no u4 holds it."""
    codes = np.arange(64).reshape(8, 8) % 16  # [out=8, in=8]
    stored = np.array([[15, 3, 0, 1, 2, 3, 4, 5]])  # one group (group_size 8)
    lw = convert_gptq_layer("l", _fmt(group_size=8), pack_gptq_rows(codes.T, 4), pack_gptq_columns(stored, 4),
                            np.ones((1, 8), np.float16), None, 8, 8)
    cw = lw.compressed
    assert cw.mode is CompressWeightsMode.INT8_ASYM and "zero point 16" in lw.note
    assert cw.zero_point.reshape(-1).tolist() == (stored[0] + 1).tolist()
    assert np.array_equal(lw.dequantized(), codes - (stored + 1).T)


def test_sym_checkpoint_with_other_zero_points_keeps_them():
    codes = np.arange(64).reshape(8, 8) % 16
    zeros = np.array([[8, 5, 8, 8, 8, 8, 8, 8]])
    lw = convert_gptq_layer("l", _fmt(group_size=8, sym=True, checkpoint_format="gptq_v2"),
                            pack_gptq_rows(codes.T, 4), pack_gptq_columns(zeros, 4),
                            np.ones((1, 8), np.float16), None, 8, 8)
    assert lw.compressed.mode is CompressWeightsMode.INT4_ASYM and "zero points other than 8" in lw.note
    assert np.array_equal(lw.dequantized(), codes - zeros.T)


def test_act_order_groups_must_be_whole():
    g_idx = np.array([0, 0, 0, 1, 1, 1, 1, 1])  # 3 and 5 channels: not a GPTQ grouping
    with pytest.raises(ExportError, match=r"l\.g_idx puts 3 input channels in group 0, but that group must hold 4"):
        convert_gptq_layer("l", _fmt(desc_act=True), pack_gptq_rows(np.zeros((8, 8), int), 4),
                           pack_gptq_columns(np.zeros((2, 8), int), 4), np.ones((2, 8), np.float16), g_idx, 8, 8)


@pytest.mark.parametrize("act_order", [False, True])
def test_ragged_groups_split_into_equal_sub_groups(act_order):
    """24 inputs, group size 16: groups of 16 and 8 become three groups of gcd = 8 with repeated parameters."""
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 16, size=(8, 24))
    zeros = rng.integers(1, 16, size=(2, 8))
    scales = rng.uniform(0.5, 2, size=(2, 8)).astype(np.float16)
    g_idx = np.arange(24) // 16
    if act_order:
        order = rng.permutation(24)
        g_idx = np.empty(24, dtype=np.int64)
        g_idx[order] = np.arange(24) // 16
    lw = convert_gptq_layer("l", _fmt(group_size=16, desc_act=act_order), pack_gptq_rows(codes.T, 4),
                            pack_gptq_columns(zeros - 1, 4), scales, g_idx.astype(np.int32), 24, 8)
    cw = lw.compressed
    assert cw.group_size == 8 and cw.codes.shape == (8, 3, 8) and "3 sub-groups of 8" in lw.note
    expected = (codes - zeros[g_idx].T) * scales[g_idx].T.astype(np.float32)
    assert np.array_equal(lw.dequantized(), expected.astype(np.float32))


def test_act_order_ragged_groups_must_have_the_gptq_sizes():
    g_idx = np.array([0] * 12 + [1] * 12)  # 24 inputs with group size 16 hold 16 + 8, not 12 + 12
    with pytest.raises(ExportError, match=r"puts 12 input channels in group 0, but that group must hold 16"):
        convert_gptq_layer("l", _fmt(group_size=16, desc_act=True), pack_gptq_rows(np.zeros((24, 8), int), 4),
                           pack_gptq_columns(np.zeros((2, 8), int), 4), np.ones((2, 8), np.float16), g_idx, 24, 8)


def test_three_bit_words_straddle_as_gptq_packs_them():
    """Value 10 of a run of 32 takes bits 30-31 of word 0 and bit 0 of word 1 (AutoGPTQ's 3-bit layout)."""
    values = np.zeros((32, 1), dtype=np.int64)
    values[10, 0] = 0b101
    values[21, 0] = 0b110
    words = pack_gptq_rows(values, 3).view(np.uint32)[:, 0]
    assert [int(w) for w in words] == [0b01 << 30, (0b1 << 0) | (0b0 << 31), 0b11]
    assert np.array_equal(unpack_along_rows(pack_gptq_rows(values, 3), 3), values)


# --------------------------------------------------------------------------- every layout, exactly


VARIANTS = {
    "gptq-v1-asym-g32": dict(bits=4, group_size=32),
    "gptq-v2-asym-g16": dict(bits=4, group_size=16, checkpoint_format="gptq_v2"),
    "gptq-v1-sym-g32": dict(bits=4, group_size=32, sym=True),
    "gptq-v2-sym-act-order": dict(bits=4, group_size=16, sym=True, desc_act=True, checkpoint_format="gptq_v2"),
    "gptq-v1-asym-act-order": dict(bits=4, group_size=32, desc_act=True),
    "gptq-v1-asym-per-channel": dict(bits=4, group_size=-1, desc_act=True),
    "gptq-v1-8bit-sym": dict(bits=8, group_size=32, sym=True),
    "gptq-v2-8bit-asym-act-order": dict(bits=8, group_size=32, desc_act=True, checkpoint_format="gptq_v2"),
    "gptq-sidecar-config-2-shards": dict(bits=4, group_size=64, config_file="quantize_config.json", shards=2),
    "awq-gemm-g32": dict(method="awq", bits=4, group_size=32),
    "awq-gemv-g32": dict(method="awq", bits=4, group_size=32, awq_version="gemv"),
    # GPTQModel's symmetric AWQ: zero_point false, qzeros still stored (all 8): i4 codes
    "awq-gemm-sym-zero-point-false": dict(method="awq", bits=4, group_size=32, sym=True, quant_config={
        "quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm", "zero_point": False}),
    "gptq-v1-3bit-asym-g32": dict(bits=3, group_size=32),
    "gptq-v2-3bit-sym-act-order": dict(bits=3, group_size=32, sym=True, desc_act=True, checkpoint_format="gptq_v2"),
    "gptq-v1-2bit-asym-g16": dict(bits=2, group_size=16),
    # GPTQModel's per-module rules: layer 0's down_proj left float, the MLPs in 8 bits with groups of 64
    "gptqmodel-dynamic": dict(bits=4, group_size=32, dynamic={r"-:.*layers\.0\.mlp\.down_proj": {},
                                                            r"+:.*\.mlp\..*": {"bits": 8, "group_size": 64}}),
    # Intel AutoRound, auto_gptq packing (GPTQ v1), one layer in 8 bits through extra_config
    "auto-round-auto-gptq": dict(bits=4, group_size=32, sym=True, dynamic={r"model\.layers\.1\.mlp\.down_proj$": {"bits": 8}},
                                 quant_config={"quant_method": "auto-round", "packing_format": "auto_round:auto_gptq",
                                               "bits": 4, "group_size": 32, "sym": True, "data_type": "int",
                                               "act_bits": 16, "iters": 0,
                                               "extra_config": {"model.layers.1.mlp.down_proj": {"bits": 8}}}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layout_is_kept_exactly(variant, llama_dir, llama_ir, read_ir, tmp_path):
    kw = VARIANTS[variant]
    ckpt_dir = tmp_path / variant
    planted = write_checkpoint(llama_dir, ckpt_dir, seed=len(variant), **kw)
    fmt = detect_prequantized(ckpt_dir)
    assert fmt.method == kw.get("method", "gptq") and fmt.bits == kw["bits"] and fmt.group_size == kw["group_size"]
    ckpt = PrequantizedCheckpoint(ckpt_dir)
    assert len(ckpt.layers) == len(planted) == (13 if "dynamic" in variant else 14)
    if "dynamic" in kw:
        assert sorted({p.bits for p in planted.values()}) == [4, 8]
    model = read_ir(llama_ir)
    records = apply_prequantized(model, ckpt)
    assert len(records) == len(planted)
    assert read_prequantized_info(model)["format"]["checkpoint_format"] == fmt.checkpoint_format
    check_ir_matches_planted(model, planted, kw["bits"], kw.get("sym", False))
    assert_logits_close(run_logits(model), reference_logits(ckpt_dir, planted, IDS))


@pytest.mark.parametrize("sym, act_order", [(False, False), (True, True)])
def test_ragged_groups_are_kept_exactly_and_fused(sym, act_order, llama96_dir, llama96_ir, read_ir, tmp_path):
    """Hidden size 96 with group size 64 (as gptqmodel writes 576 or 960 with 128): groups of 64 + 32 channels."""
    planted = write_checkpoint(llama96_dir, tmp_path / "q", group_size=64, sym=sym, desc_act=act_order, seed=9)
    assert {p.scales.shape[0] for p in planted.values()} == {2, 4}  # ceil(96 / 64) and 256 / 64
    model = read_ir(llama96_ir)
    records = apply_prequantized(model, PrequantizedCheckpoint(tmp_path / "q"))
    assert sorted({r["group_size"] for r in records}) == [32, 64]
    check_ir_matches_planted(model, planted, 4, sym)
    assert_logits_close(run_logits(model), reference_logits(tmp_path / "q", planted, IDS))
    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    fc_weights = Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)
                         for op in runtime.get_ordered_ops()
                         if op.get_rt_info()["layerType"].astype(str) == "FullyConnected")
    assert fc_weights["i4" if sym else "u4"] == 14, fc_weights


@pytest.mark.parametrize("sym, act_order", [(False, False), (True, True)])
def test_cpu_plugin_fuses_the_checkpoint_weights(sym, act_order, llama_dir, llama_ir, read_ir, tmp_path):
    """The compiled model's FullyConnected nodes run on the u4/i4 constants (act-order: after a Gather)."""
    write_checkpoint(llama_dir, tmp_path / "q", group_size=32, sym=sym, desc_act=act_order)
    model = read_ir(llama_ir)
    apply_prequantized(model, PrequantizedCheckpoint(tmp_path / "q"))
    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    fc_weights = Counter()
    for op in runtime.get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str) == "FullyConnected":
            fc_weights[op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)] += 1
    assert fc_weights["i4" if sym else "u4"] == 14, fc_weights
    assert not any(op.get_rt_info()["layerType"].astype(str) == "Multiply" and "fq_weights" in op.get_friendly_name()
                   for op in runtime.get_ordered_ops())


# --------------------------------------------------------------------------- end to end


def test_export_model_f16_bias_act_order_sharded_sidecar(tmp_path):
    """export_model on a float16 checkpoint with biases, act-order, two shards and a quantize_config.json."""
    from optimum_wc import export_model

    float_dir = build_llama_with_bias(tmp_path / "float")
    ckpt_dir = tmp_path / "gptq"
    planted = write_checkpoint(float_dir, ckpt_dir, group_size=16, desc_act=True, config_file="quantize_config.json",
                               shards=2, dtype="float16")
    out = tmp_path / "out"
    assert export_model(ckpt_dir, out, None, load=False) is None
    model = ov.Core().read_model(out / "openvino_model.xml")
    check_ir_matches_planted(model, planted, 4, False)
    assert_logits_close(run_logits(model), reference_logits(ckpt_dir, planted, IDS))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert {"tokenizer.json", "config.json", "openvino_model.bin"} <= set(os.listdir(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float", "gptq", "out"]  # no staging leftovers
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_from_pretrained_export_with_int8_embeddings(llama_dir, tmp_path):
    """Our config compresses the float weights (embeddings, lm_head) and leaves the GPTQ integers alone."""
    from transformers import AutoTokenizer, pipeline

    from optimum_wc import OVModelForCausalLM

    ckpt_dir = tmp_path / "gptq"
    planted = write_checkpoint(llama_dir, ckpt_dir, group_size=32, sym=True)
    config = WeightCompressionConfig(mode="int8_asym")
    model = OVModelForCausalLM.from_pretrained(ckpt_dir, export=True, quantization_config=config)
    check_ir_matches_planted(model.model, planted, 4, True)
    consts = {op.get_friendly_name(): op for op in model.model.get_ops() if op.get_type_name() == "Constant"}
    assert consts["self.model.embed_tokens.weight"].get_element_type() == ov.Type.u8
    assert consts["self.lm_head.weight"].get_element_type() == ov.Type.u8
    pipe = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(ckpt_dir))
    text = pipe("It is a truth", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("It is a truth")

    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    reloaded = OVModelForCausalLM.from_pretrained(saved)
    assert reloaded.wc_config == config
    check_ir_matches_planted(reloaded.model, planted, 4, True)
    assert {"tokenizer.json", "optimum_wc_config.json"} <= set(os.listdir(saved))
    # the integers are in the graph: the saved model no longer claims to be a GPTQ checkpoint
    assert "quantization_config" not in json.loads((saved / "config.json").read_text())
    assert getattr(reloaded.config, "quantization_config", None) is None


def test_example_converts_without_gptq_libraries_or_cuda(llama_dir, tmp_path):
    """examples/convert_gptq.py, run with auto_gptq / gptqmodel / awq / CUDA modules blocked from import."""
    ckpt_dir = tmp_path / "gptq"
    write_checkpoint(llama_dir, ckpt_dir, group_size=32, desc_act=True, dtype="float16")
    out = tmp_path / "out"
    runner = textwrap.dedent(f"""
        import importlib.abc, runpy, sys
        GPTQ_LIBS, BLOCKED = {GPTQ_LIBS!r}, {GPTQ_LIBS + CUDA_LIBS!r}
        ATTEMPTS = []
        class Block(importlib.abc.MetaPathFinder):
            # An import of a blocked name fails (and is recorded); an availability probe
            # (importlib.util.find_spec, as optimum/transformers do at import time) sees it absent.
            def find_spec(self, name, path=None, target=None):
                if not any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    return None
                frame = sys._getframe(1)
                for _ in range(4):
                    if frame is None:
                        break
                    code = frame.f_code
                    if code.co_name == "find_spec" and "importlib" in code.co_filename and "util" in code.co_filename:
                        return None  # a probe: "not installed" (none of them is installed here)
                    frame = frame.f_back
                if any(name == b or name.startswith(b + ".") for b in GPTQ_LIBS):
                    ATTEMPTS.append(name)
                raise ImportError(f"blocked import of {{name}}")
        sys.meta_path.insert(0, Block())
        sys.argv = ["convert_gptq.py", {str(ckpt_dir)!r}, {str(out)!r}, "--int8-embeddings", "--max-new-tokens", "4"]
        runpy.run_path({str(ROOT / "examples" / "convert_gptq.py")!r}, run_name="__main__")
        import torch
        loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
        print("BLOCKED-LOADED", loaded, "ATTEMPTS", ATTEMPTS, "CUDA-INITIALIZED", torch.cuda.is_initialized())
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BLOCKED-LOADED [] ATTEMPTS [] CUDA-INITIALIZED False" in result.stdout, result.stdout[-2000:]
    assert "kept exactly: 14 GPTQ linear layers" in result.stdout and "A: " in result.stdout
    assert (out / "openvino_model.xml").is_file()


# --------------------------------------------------------------------------- bad checkpoints


def _drop_scales(d):
    edit_tensors(d, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.scales"})


def _g_idx_out_of_range(d):
    def edit(t):
        g = t["model.layers.0.self_attn.k_proj.g_idx"].clone()
        g[5] = 7  # 64 inputs / 32 = 2 groups
        t["model.layers.0.self_attn.k_proj.g_idx"] = g
        return t
    edit_tensors(d, edit)


BAD = {
    "missing scales": (
        _drop_scales, r"model\.layers\.1\.mlp\.up_proj\.scales is missing from the checkpoint.*re-download"
    ),
    "shape disagrees with config": (
        lambda d: edit_config(d, lambda c: c.update(intermediate_size=128)),
        r"model\.layers\.0\.mlp\.gate_proj\.qweight has shape \[8, 192\], but config\.json makes "
        r"model\.layers\.0\.mlp\.gate_proj\.weight \[128, 64\].*must be \[8, 128\]",
    ),
    "5 bits": (
        lambda d: edit_config(d, lambda c: c["quantization_config"].update(bits=5)),
        r"config\.json: GPTQ bits=5 is not supported.*2-bit, 3-bit, 4-bit, 8-bit",
    ),
    "ragged act-order groups": (
        # 36 keeps every layer's group count (ceil(64 / 36) = 2, ceil(192 / 36) = 6) but not the groups' sizes
        lambda d: edit_config(d, lambda c: c["quantization_config"].update(group_size=36)),
        r"g_idx puts 32 input channels in group 0, but that group must hold 36",
    ),
    "dynamic rule leaves a quantized layer float": (
        lambda d: edit_config(d, lambda c: c["quantization_config"].update(dynamic={r"-:.*k_proj": {}})),
        r"model\.layers\.0\.self_attn\.k_proj\.qweight is in the checkpoint, but a per-layer override",
    ),
    "g_idx out of range": (
        _g_idx_out_of_range,
        r"model\.layers\.0\.self_attn\.k_proj\.g_idx maps input channel 5 to group 7, outside \[0, 2\)",
    ),
    "awq marlin with zero points": (
        lambda d: edit_config(d, lambda c: c["quantization_config"].update(quant_method="awq", version="marlin")),
        r"a Marlin checkpoint must be 4-bit, symmetric, without act-order and with group_size 128 or -1 \(got bits=4, "
        r"sym=False",
    ),
    "awq exllama": (
        lambda d: edit_config(d, lambda c: c["quantization_config"].update(quant_method="awq", version="exllama")),
        r"AWQ version='exllama' is not supported; optimum-wc reads the GEMM, GEMV and Marlin layouts",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_fail_clearly_and_write_nothing(case, llama_dir, tmp_path):
    from optimum_wc import OVModelForCausalLM, export_model

    ckpt_dir = tmp_path / "gptq"
    write_checkpoint(llama_dir, ckpt_dir, group_size=32, desc_act=True)
    mutate, pattern = BAD[case]
    mutate(ckpt_dir)
    out = tmp_path / "out" / "model"
    with pytest.raises(ExportError, match=pattern):
        export_model(ckpt_dir, out, WeightCompressionConfig(mode="int8_asym"), load=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    if case in ("missing scales", "5 bits"):
        with pytest.raises(ExportError, match=pattern):
            OVModelForCausalLM.from_pretrained(ckpt_dir, export=True)


def test_detection(llama_dir, tmp_path):
    assert detect_prequantized(llama_dir) is None
    ckpt_dir = tmp_path / "gptq"
    write_checkpoint(llama_dir, ckpt_dir, config_file="quantize_config.json", sym=True)
    fmt = detect_prequantized(ckpt_dir)
    assert (fmt.method, fmt.bits, fmt.sym, fmt.checkpoint_format) == ("gptq", 4, True, "gptq")
    assert Path(fmt.source).name == "quantize_config.json"
    edit_config(ckpt_dir, lambda c: c.update(quantization_config={"quant_method": "gptq", "bits": 8}))
    with pytest.raises(ExportError, match=r"bits=4 in quantize_config\.json but bits=8 in config\.json"):
        detect_prequantized(ckpt_dir)
    bnb = {"quant_method": "bitsandbytes", "load_in_4bit": True}  # BitsAndBytesConfig's default type is fp4
    edit_config(ckpt_dir, lambda c: c.update(quantization_config=bnb))
    assert (detect_prequantized(ckpt_dir).method, detect_prequantized(ckpt_dir).checkpoint_format) == (
        "bitsandbytes", "fp4")
    edit_config(ckpt_dir, lambda c: c.update(quantization_config={"quant_method": "hqq", "nbits": 4}))
    assert detect_prequantized(ckpt_dir) is None  # not ours: left to optimum-intel


AUTO_ROUND = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True, "data_type": "int"}


@pytest.mark.parametrize("extra, expected", [
    ({"packing_format": "auto_round:auto_gptq"}, ("gptq", "gptq")),
    ({"packing_format": "auto_round:gptqmodel"}, ("gptq", "gptq_v2")),
    ({"packing_format": "auto_round", "sym": False}, ("gptq", "gptq_v2")),
    ({"packing_format": "auto_round:auto_awq", "sym": False}, ("awq", "awq_gemm")),
    ({"packing_format": "auto_round:auto_gptq", "data_type": "nv_fp"}, r"AutoRound data_type='nv_fp' is not supported"),
    ({"packing_format": "auto_round:auto_gptq", "act_bits": 8}, r"AutoRound act_bits=8 quantizes activations"),
    ({"packing_format": "auto_round:fp8"}, r"AutoRound packing_format='auto_round:fp8' is not supported"),
])
def test_auto_round_configs(extra, expected, tmp_path):
    """AutoRound names its layout in packing_format: GPTQ v1 (auto_gptq), GPTQ v2 (auto_round, gptqmodel) or AWQ."""
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {**AUTO_ROUND, **extra}}))
    if isinstance(expected, str):
        with pytest.raises(ExportError, match=expected):
            detect_prequantized(tmp_path)
        return
    fmt = detect_prequantized(tmp_path)
    assert (fmt.method, fmt.checkpoint_format, fmt.producer) == (*expected, "auto-round")


def test_per_layer_overrides_take_names_before_regexes():
    """GPTQModel dynamic: first matching rule wins, "-:" leaves the layer float; AutoRound extra_config: names first."""
    dynamic = _fmt(overrides=formats_module._gptqmodel_dynamic(
        {r"-:.*\.0\.mlp\..*": {}, r"+:.*mlp.*": {"bits": 8, "group_size": 64}}, "test"))
    assert dynamic.for_layer("model.layers.0.mlp.up_proj") is None
    layer = dynamic.for_layer("model.layers.1.mlp.up_proj")
    assert (layer.bits, layer.group_size, layer.sym) == (8, 64, False)
    assert dynamic.for_layer("model.layers.1.self_attn.q_proj") is dynamic
    extra = {r".*down_proj": {"bits": 16}, "model.layers.1.mlp.down_proj": {"bits": 8}}
    auto = formats_module._auto_round_format({**AUTO_ROUND, "extra_config": extra}, "test")
    assert auto.for_layer("model.layers.1.mlp.down_proj").bits == 8  # the exact name beats the earlier regex
    assert auto.for_layer("model.layers.0.mlp.down_proj") is None  # bits 16: left float


def test_stock_optimum_intel_class_exports_gptq_through_us(llama_dir, tmp_path, caplog):
    """After `import optimum_wc`, optimum-intel's own OVModelForCausalLM(export=True) keeps the GPTQ integers."""
    import logging

    import optimum_wc  # noqa: F401 - installs the hook
    from optimum.intel import OVModelForCausalLM

    ckpt_dir = tmp_path / "gptq"
    planted = write_checkpoint(llama_dir, ckpt_dir, group_size=32, desc_act=True)
    with caplog.at_level(logging.INFO, logger="optimum_wc"):
        model = OVModelForCausalLM.from_pretrained(ckpt_dir, export=True, compile=False)
    assert "placeholder weights failed" not in caplog.text  # the float weights of quantized layers were never built
    check_ir_matches_planted(model.model, planted, 4, False)
    assert_logits_close(run_logits(model.model), reference_logits(ckpt_dir, planted, IDS))


def test_staging_without_dequantized_layers_writes_only_the_float_parts(llama_dir, tmp_path):
    from safetensors import safe_open

    from optimum_wc.checkpoints.staging import stage_float_checkpoint

    ckpt_dir = tmp_path / "gptq"
    planted = write_checkpoint(llama_dir, ckpt_dir, group_size=32)
    ckpt = PrequantizedCheckpoint(ckpt_dir)
    stage_float_checkpoint(ckpt, tmp_path / "staged", dequantized_layers=False)
    names = set()
    for file in (tmp_path / "staged").glob("*.safetensors"):
        with safe_open(file, framework="np") as f:
            names |= set(f.keys())
    assert not any(n.startswith(tuple(planted)) for n in names if n.endswith((".weight", ".qweight", ".scales")))
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
    assert "quantization_config" not in json.loads((tmp_path / "staged" / "config.json").read_text())


# ------------------------------------------------------------- streamed (no staged checkpoint, no float IR)


def _staged_path_forbidden(monkeypatch):
    """Make the classic path (a staged float checkpoint exported to a float IR) fail if it is taken."""
    import optimum_wc.export.prequantized as prequantized

    def forbidden(*args, **kwargs):
        raise AssertionError("the streamed export staged a float checkpoint")

    monkeypatch.setattr(prequantized, "stage_float_checkpoint", forbidden)
    monkeypatch.setattr(prequantized, "export_float_ir", forbidden)


@pytest.mark.parametrize("config", [
    dict(mode="int8_asym"),
    dict(mode="int4_sym", group_size=16, ratio=1.0, all_layers=True),
])
def test_streamed_gptq_export_writes_what_the_staged_path_writes(config, llama_dir, tmp_path, monkeypatch):
    """Float parts streamed, integer layers made while the .bin is written: the same bytes as staging + float IR."""
    import openvino as ov

    from optimum_wc.export.pipeline import compress_and_save
    from optimum_wc.export.prequantized import DeferredLayers, export_prequantized_ir
    from optimum_wc.report import Stages

    ckpt_dir = tmp_path / "gptq"
    planted = write_checkpoint(llama_dir, ckpt_dir, group_size=32, desc_act=True)
    wc = WeightCompressionConfig(**config)

    classic = tmp_path / "classic"
    export_prequantized_ir(ckpt_dir, tmp_path / "classic-float", stream=False)  # staged float checkpoint + IR
    model = ov.Core().read_model(tmp_path / "classic-float" / "openvino_model.xml")
    classic.mkdir()
    compress_and_save(model, classic, wc, Stages(("export", "compress", "save")),
                      float_source=tmp_path / "classic-float" / "openvino_model.bin")
    del model

    computed = []
    original_compute = DeferredLayers.compute
    monkeypatch.setattr(DeferredLayers, "compute",
                        lambda self, layer: computed.append(layer) or original_compute(self, layer))
    _staged_path_forbidden(monkeypatch)
    from optimum_wc import export_model

    streamed = tmp_path / "streamed"
    export_model(ckpt_dir, streamed, wc, load=False)
    assert len(computed) == len(planted) == 14  # every integer layer made once, while writing
    assert (streamed / "openvino_model.bin").read_bytes() == (classic / "openvino_model.bin").read_bytes()
    streamed_model = ov.Core().read_model(streamed / "openvino_model.xml")
    check_ir_matches_planted(streamed_model, planted, 4, False)
    classic_model = ov.Core().read_model(classic / "openvino_model.xml")
    assert read_prequantized_info(streamed_model) == read_prequantized_info(classic_model)
    report = json.loads((streamed / "compression_report.json").read_text())
    assert report["resources"]["streamed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classic", "classic-float", "gptq", "streamed"]


def test_streamed_gptq_export_kept_float(llama_dir, tmp_path, monkeypatch):
    """No config: the integer layers are put in place in memory (nothing to write them lazily), float parts streamed."""
    ckpt_dir = tmp_path / "gptq"
    planted = write_checkpoint(llama_dir, ckpt_dir, group_size=32, sym=True)
    _staged_path_forbidden(monkeypatch)
    from optimum_wc import export_model

    export_model(ckpt_dir, tmp_path / "out", None, load=False)
    model = ov.Core().read_model(tmp_path / "out" / "openvino_model.xml")
    check_ir_matches_planted(model, planted, 4, True)
    assert_logits_close(run_logits(model), reference_logits(ckpt_dir, planted, IDS))
