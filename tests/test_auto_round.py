"""Intel AutoRound checkpoints made by auto-round itself: the IR keeps their integers exactly.

The fixtures under ``tests/fixtures/auto_round/`` were written by
``tests/fixtures/make_auto_round.py`` (auto-round's RTN mode, in a throw-away
environment; versions in each ``fixture.json``).  Each holds the tool's own
dequantized weights (``reference.safetensors``, float16).  No test imports
auto-round.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import conftest
import numpy as np
import openvino as ov
import pytest

from optimum_wc.checkpoints.formats import detect_prequantized
from optimum_wc.checkpoints.reader import PrequantizedCheckpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "auto_round"
NAMES = sorted(p.name for p in FIXTURES.glob("*") if (p / "fixture.json").is_file())
IDS = np.random.default_rng(1).integers(3, 500, size=(2, 16)).astype(np.int64)
LAYOUTS = {"auto_round:auto_gptq": ("gptq", "gptq"), "auto_round:auto_awq": ("awq", "awq_gemm")}


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "fixture.json").read_text())


def test_fixtures_are_there():
    assert NAMES == ["w4g32-asym", "w4g32-sym"]


@pytest.mark.parametrize("name", NAMES)
def test_layers_equal_the_tools_dequantization(name):
    from safetensors.numpy import load_file

    meta = _fixture(name)
    fmt = detect_prequantized(FIXTURES / name)
    assert (fmt.method, fmt.checkpoint_format) == LAYOUTS[meta["packing_format"]] and fmt.producer == "auto-round"
    ckpt = PrequantizedCheckpoint(FIXTURES / name)
    assert len(ckpt.layers) == 14
    reference = load_file(str(FIXTURES / name / "reference.safetensors"))
    for layer in ckpt.layers:
        lw = ckpt.layer_weights(layer)
        assert lw.compressed.mode.value == ("int4_sym" if meta["symmetric"] else "int4_asym")
        # the tool dequantizes in float16: one rounding of the exact product
        assert np.array_equal(lw.dequantized().astype(np.float16), reference[layer.weight_name]), layer.prefix


@pytest.mark.parametrize("name", NAMES)
def test_export_logits_and_fusion(name, tmp_path):
    from optimum_wc import export_model

    out = tmp_path / "out"
    export_model(FIXTURES / name, out, None, load=False)
    model = ov.Core().read_model(out / "openvino_model.xml")
    logits = conftest.run_logits(model, IDS, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})

    ckpt = PrequantizedCheckpoint(FIXTURES / name)
    dequantized = {layer.weight_name: ckpt.layer_weights(layer).dequantized() for layer in ckpt.layers}
    ref = conftest.dequantized_logits(FIXTURES / name, dequantized, IDS,
                                      keep=lambda k, v: v.is_floating_point() and not k.endswith(".scales"))
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-3
    assert np.array_equal(logits.argmax(-1), ref.argmax(-1))

    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    fc = Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)
                 for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "FullyConnected")
    assert fc["i4" if _fixture(name)["symmetric"] else "u4"] == 14, fc
