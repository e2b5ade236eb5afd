"""gpt-oss MoE experts stored in MXFP4 (``*_blocks`` / ``*_scales``) keep their codes and scales in the IR.

The checkpoint is written by ``tests/mxfp4_writer.py`` in the layout of the
gpt-oss checkpoints (transformers' ``integrations/mxfp4.py``); the reference
is transformers' own dequantization, ``convert_moe_packed_tensors``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import conftest
import mxfp4_writer
import numpy as np
import openvino as ov
import pytest
from gptq_writer import edit_tensors

from optimum_wc import ExportError
from optimum_wc.checkpoints.formats import detect_prequantized
from optimum_wc.checkpoints.reader import PrequantizedCheckpoint

IDS = np.random.default_rng(3).integers(3, 500, size=(2, 10)).astype(np.int64)
TOKENIZER = Path(__file__).resolve().parent / "fixtures" / "compressed_tensors" / "w4a16-g32-sym"


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt-oss")
    mxfp4_writer.build_float(root / "float", TOKENIZER)
    reference = mxfp4_writer.write_checkpoint(root / "float", root / "mxfp4")
    return root / "mxfp4", reference


def test_detection_and_the_experts_equal_transformers_dequantization(gpt_oss):
    path, reference = gpt_oss
    fmt = detect_prequantized(path)
    assert (fmt.method, fmt.bits, fmt.group_size) == ("mxfp4", 4, 32)
    ckpt = PrequantizedCheckpoint(path)
    assert sorted(layer.weight_name for layer in ckpt.layers) == sorted(reference)
    for layer in ckpt.layers:
        ours = ckpt.layer_weights(layer).dequantized()  # [experts, out, in]
        assert ours.shape == layer.ir_shape
        assert np.array_equal(ours.transpose(0, 2, 1), reference[layer.weight_name]), layer.weight_name


def test_export_keeps_the_codes_and_matches_the_dequantized_model(gpt_oss, tmp_path):
    from optimum_wc import export_model

    path, reference = gpt_oss
    out = tmp_path / "out"
    assert export_model(path, out, None, load=False) is None
    model = ov.Core().read_model(out / "openvino_model.xml")
    kinds = Counter(op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant")
    assert kinds["f4e2m1"] == len(reference) and kinds["f8e8m0"] == len(reference), kinds
    # each expert MatMul reads its decompressed weight [experts, out, in] directly: no transposed copy
    for op in model.get_ops():
        if op.get_type_name() == "MatMul" and "/experts/" in op.get_friendly_name():
            assert op.get_attributes()["transpose_b"] is True
    records = json.loads((out / "compression_report.json").read_text())["prequantized"]["layers"]
    assert {r["mode"] for r in records} == {"mxfp4"}

    ref = conftest.dequantized_logits(path, reference, IDS)
    logits = conftest.run_logits(model, IDS, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-3
    assert np.array_equal(logits.argmax(-1), ref.argmax(-1))

    # OpenVINO 2026.4's CPU plugin has no fused kernel for 3-D expert weights: it decompresses them in its graph
    # (and holds the result: at run time the experts take their float size, see BENCHMARKS.md)
    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    decompressing = [op for op in runtime.get_ordered_ops()
                     if any(str(i.get_element_type()) == "<Type: 'f4e2m1'>" for i in op.inputs())]
    assert len(decompressing) == len(reference)


def test_missing_scales_fail_clearly_and_write_nothing(gpt_oss, tmp_path):
    from optimum_wc import export_model

    path, _ = gpt_oss
    src = tmp_path / "bad"
    shutil.copytree(path, src)
    name = "model.layers.1.mlp.experts.down_proj_scales"
    edit_tensors(src, lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ExportError, match=r"model\.layers\.1\.mlp\.experts\.down_proj_scales is missing from the "
                                          r"checkpoint \(its model\.layers\.1\.mlp\.experts\.down_proj_blocks is there\)"):
        export_model(src, tmp_path / "out", None, load=False)
    assert not (tmp_path / "out").exists()


def test_streamed_float_export_keeps_the_small_tensors_alive(gpt_oss, tmp_path):
    """The streamed export's Constants share the traced model's small tensors (biases, sinks, norms) instead of
    copying them: the IR must keep the traced model alive.  Before it did, gpt-oss' attention biases read freed
    memory (NaN logits, seen here); freed small blocks are handed out again to the junk allocated below."""
    import gc

    import torch
    from safetensors.torch import load_file

    from optimum_wc.export.streaming import export_float_model, streamable

    float_dir = gpt_oss[0].parent / "float"
    model, _ = export_float_model(float_dir, tmp_path, streamable(float_dir))
    gc.collect()
    junk = [torch.full((n,), 7.0, dtype=torch.bfloat16) for n in (16, 32, 64, 128) for _ in range(20000)]
    checkpoint = load_file(str(float_dir / "model.safetensors"))
    checked = 0
    for op in model.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Constant" and name.startswith("self.") and name.endswith("._openvino_orig_bias"):
            want = checkpoint[name[len("self."):].replace("._openvino_orig_bias", ".bias")]
            assert np.array_equal(op.get_data().view(np.uint16), want.view(torch.int16).numpy().view(np.uint16)), name
            checked += 1
    assert checked == 8 and len(junk) == 80000  # the q/k/v/o biases of both layers
