"""bitsandbytes checkpoints made by bitsandbytes itself: the IR keeps their 4-bit / 8-bit codes.

The fixtures under ``tests/fixtures/bitsandbytes/`` were written by
``tests/fixtures/make_bitsandbytes.py`` in a throw-away environment with
bitsandbytes installed (versions in each ``fixture.json``); each holds the
tool's own float32 dequantization of every quantized linear
(``reference.safetensors``).  No test imports bitsandbytes.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import conftest
import numpy as np
import openvino as ov
import pytest
from gptq_writer import edit_config, edit_tensors

from optimum_wc import ExportError
from optimum_wc.checkpoints.formats import detect_prequantized
from optimum_wc.checkpoints.reader import PrequantizedCheckpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bitsandbytes"
NAMES = sorted(p.name for p in FIXTURES.glob("*") if (p / "fixture.json").is_file())
IDS = np.random.default_rng(1).integers(3, 500, size=(2, 16)).astype(np.int64)
# The IR's scales are float16 and it decompresses in float16: the scale's rounding, the table's (nf4 / the
# quant_map -> f16) and the product's, each at most 2^-11 relative (2^-12 for round-to-nearest, counted loosely)
IR_BOUND = 2.0**-9


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "fixture.json").read_text())


def _reference(name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(FIXTURES / name / "reference.safetensors"))


def _ir_weights(model: ov.Model) -> dict[str, np.ndarray]:
    """Every decompressed weight of the IR, evaluated by OpenVINO itself from its constants (``{name: [out, in]}``)."""
    out = {}
    for op in model.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Multiply" and name.endswith("/fq_weights"):
            result = ov.Core().compile_model(ov.Model([op.output(0)], []), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})({})
            w = next(iter(result.values())).astype(np.float32)
            site = name[: -len("/fq_weights")].removeprefix("self.")  # the parameter's name, as the exporter spelled it
            out[site.replace("._openvino_orig_weight", ".weight")] = w.reshape(w.shape[0], -1)
    return out


def test_fixtures_are_there():
    assert {"nf4", "nf4-double", "fp4", "int8", "nf4-double-skip"} <= set(NAMES), NAMES


@pytest.mark.parametrize("name", NAMES)
def test_detection_and_layers_equal_bitsandbytes(name):
    meta = _fixture(name)
    fmt = detect_prequantized(FIXTURES / name)
    assert (fmt.method, fmt.bits) == ("bitsandbytes", meta["bits"])
    assert fmt.checkpoint_format == (meta["quant_type"] if meta["bits"] == 4 else "int8")
    ckpt = PrequantizedCheckpoint(FIXTURES / name)
    reference = _reference(name)
    assert sorted(layer.weight_name for layer in ckpt.layers) == sorted(reference)
    for layer in ckpt.layers:
        ours, tool = ckpt.layer_weights(layer).dequantized(), reference[layer.weight_name]
        if meta["bits"] == 4:  # the codes' values times the float32 absmax: bitsandbytes' own float32 product
            assert np.array_equal(ours.view(np.uint32), tool.view(np.uint32)), layer.prefix
        else:  # CB * (SCB / 127) against (CB * SCB) / 127: float32 roundings apart
            assert np.all(np.abs(ours - tool) <= 2.0**-22 * np.abs(tool)), layer.prefix


@pytest.mark.parametrize("name", NAMES)
def test_export_keeps_the_codes_logits_and_greedy_text(name, tmp_path):
    import torch

    from optimum_wc import export_model

    meta, reference = _fixture(name), _reference(name)
    out = tmp_path / "out"
    assert export_model(FIXTURES / name, out, None, load=False) is None
    model = ov.Core().read_model(out / "openvino_model.xml")

    # the IR's weights: bitsandbytes' within the float16 rounding of the scales and of the decompression
    ir = _ir_weights(model)
    assert sorted(ir) == sorted(reference)
    for key, tool in reference.items():
        assert np.all(np.abs(ir[key] - tool) <= IR_BOUND * np.abs(tool) + 2.0**-24), key

    ref = conftest.dequantized_logits(FIXTURES / name, reference, IDS, keep=lambda k, v: v.dtype == torch.bfloat16)
    logits = conftest.run_logits(model, IDS, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-3
    assert np.array_equal(logits.argmax(-1), ref.argmax(-1))  # greedy continuations agree position by position

    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    fc = Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)
                 for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "FullyConnected")
    kinds = Counter(op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant")
    if meta["quant_type"] == "fp4":  # u4 indices into the float32 quant_map (a Gather the plugin decompresses)
        assert kinds["u4"] == len(reference), kinds
    else:
        assert fc["nf4" if meta["bits"] == 4 else "i8"] == len(reference), fc
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest, ignore=shutil.ignore_patterns("reference.safetensors"))
    return dest


LAYER = "model.layers.0.self_attn.q_proj"
BAD = {
    "missing absmax": (
        "nf4", lambda d: edit_tensors(d, lambda t: {k: v for k, v in t.items() if k != f"{LAYER}.weight.absmax"}),
        rf"{LAYER}\.weight\.absmax is missing from the checkpoint",
    ),
    "missing nested absmax": (
        "nf4-double",
        lambda d: edit_tensors(d, lambda t: {k: v for k, v in t.items() if k != f"{LAYER}.weight.nested_absmax"}),
        rf"{LAYER}\.weight\.nested_absmax is missing.*double-quantized bitsandbytes 4-bit layer needs",
    ),
    "quant type disagrees": (
        "nf4", lambda d: edit_config(d, lambda c: c["quantization_config"].update(bnb_4bit_quant_type="fp4")),
        r"holds 'nf4' codes, but .* says bnb_4bit_quant_type='fp4'",
    ),
    "8-bit config on 4-bit weights": (
        "nf4", lambda d: edit_config(d, lambda c: c["quantization_config"].update(
            load_in_4bit=False, _load_in_4bit=False, load_in_8bit=True, _load_in_8bit=True)),
        r"is a 4-bit bitsandbytes layer, but .* says load_in_8bit",
    ),
    "SCB of the wrong length": (
        "int8", lambda d: edit_tensors(d, lambda t: {**t, f"{LAYER}.SCB": t[f"{LAYER}.SCB"][:10]}),
        rf"{LAYER}\.SCB is F32 \[10\], but config\.json makes {LAYER}\.weight \[64, 64\], so it must be F32 \[64\]",
    ),
    "quant state of another shape": (
        "fp4", lambda d: edit_config(d, lambda c: c.update(intermediate_size=128)),
        r"gate_proj\.weight\.quant_state\.bitsandbytes__fp4 gives shape \[192, 64\], but config\.json makes "
        r"model\.layers\.0\.mlp\.gate_proj\.weight \[128, 64\]",
    ),
    "fp16 weights kept": (
        "int8", lambda d: edit_config(d, lambda c: c["quantization_config"].update(llm_int8_has_fp16_weight=True)),
        r"llm_int8_has_fp16_weight=true keeps float weights",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_fail_clearly_and_write_nothing(case, tmp_path):
    from optimum_wc import export_model

    name, edit, message = BAD[case]
    src = _copy(name, tmp_path)
    edit(src)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        export_model(src, out, None, load=False)
    assert not out.exists()
