"""GPTQ checkpoints made by GPTQModel itself (v1, v2, act-order, ``dynamic``) and a Marlin one, kept exactly.

The fixtures under ``tests/fixtures/gptqmodel/`` were written by
``tests/fixtures/make_gptqmodel.py`` in a throw-away environment with
GPTQModel 7.6 (CPU); ``marlin-g128`` is a GPTQModel checkpoint repacked by
that script's Marlin writer, which follows AutoGPTQ's ``qlinear_marlin.py``
line for line (GPTQModel no longer writes Marlin).  Each holds the tool's own
float32 dequantization (``reference.safetensors``).  No test imports GPTQModel.
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
from gptq_writer import edit_config

from optimum_wc import ExportError
from optimum_wc.checkpoints.formats import detect_prequantized
from optimum_wc.checkpoints.reader import PrequantizedCheckpoint
from optimum_wc.quant.marlin import marlin_perms, unpack_marlin

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gptqmodel"
NAMES = sorted(p.name for p in FIXTURES.glob("*") if (p / "fixture.json").is_file())
IDS = np.random.default_rng(2).integers(3, 500, size=(2, 12)).astype(np.int64)


def _reference(name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(FIXTURES / name / "reference.safetensors"))


def test_fixtures_are_there():
    assert {"gptq-v1-g32-sym", "gptq-g32-actorder-asym", "gptq_v2-g32-actorder-asym", "dynamic",
            "marlin-g128"} <= set(NAMES), NAMES


@pytest.mark.parametrize("name", NAMES)
def test_layers_equal_gptqmodels_dequantization(name):
    fmt = detect_prequantized(FIXTURES / name)
    ckpt = PrequantizedCheckpoint(FIXTURES / name)
    reference = _reference(name)
    assert sorted(layer.weight_name for layer in ckpt.layers) == sorted(reference)
    assert fmt.producer == ("" if name == "marlin-g128" else "gptqmodel")
    for layer in ckpt.layers:
        ours = ckpt.layer_weights(layer).dequantized()
        assert np.array_equal(ours, reference[layer.weight_name]), layer.prefix  # scale x small integer: exact


def test_gptqmodel_v1_zero_points_of_zero_borrow_from_the_next_field():
    """GPTQModel writes v1 as ``word - 0x11111111``: a zero point of 0 stores 15 and takes 1 from the next field.

    The act-order fixture has such zero points (rows forced one-signed before quantizing); reading its fields one
    by one (+1 each, AutoGPTQ's rule) would be wrong there, which the whole-word rule used for GPTQModel avoids."""
    from safetensors.numpy import load_file

    from optimum_wc.quant.bitpack import unpack_along_columns

    name, prefix = "gptq-g32-actorder-asym", "model.layers.0.mlp.up_proj"
    qzeros = load_file(str(FIXTURES / name / "model.safetensors"))[f"{prefix}.qzeros"]
    assert (unpack_along_columns(qzeros, 4) == 15).any()  # a stored 15: where the two rules part
    ckpt = PrequantizedCheckpoint(FIXTURES / name)
    layer = next(lay for lay in ckpt.layers if lay.prefix == prefix)
    zp = ckpt.layer_weights(layer).compressed.zero_point
    assert zp.min() == 0 and zp.max() <= 15


def test_marlin_permutations_are_permutations_and_the_unpacker_inverts_a_pack():
    """A pack written here from AutoGPTQ's ``QuantLinear.pack`` (tiles, ``perm``, 8 nibbles per word) round-trips."""
    perm, scale_perm, single = marlin_perms()
    assert sorted(perm) == list(range(1024)) and sorted(scale_perm) == list(range(64))
    assert sorted(single) == list(range(32))
    rng = np.random.default_rng(0)
    for n_in, n_out, groups in ((256, 128, 2), (128, 64, 1)):
        codes = rng.integers(0, 16, size=(n_in, n_out))
        scales = rng.uniform(0.01, 0.1, size=(groups, n_out)).astype(np.float16)
        w = codes.reshape(n_in // 16, 16, n_out // 16, 16).transpose(0, 2, 1, 3).reshape(n_in // 16, n_out * 16)
        w = w.reshape(-1, 1024)[:, perm].reshape(w.shape).astype(np.uint32)
        packed = np.zeros((w.shape[0], w.shape[1] // 8), dtype=np.uint32)
        for k in range(8):
            packed |= w[:, k::8] << np.uint32(4 * k)
        s = scales.reshape(-1, 64)[:, scale_perm] if groups > 1 else scales.reshape(-1, 32)[:, single]
        got_codes, got_scales = unpack_marlin(packed.view(np.int32), s.reshape(groups, n_out))
        assert np.array_equal(got_codes, codes.T) and np.array_equal(got_scales, scales)


@pytest.mark.parametrize("name", NAMES)
def test_export_keeps_the_integers_logits_greedy_and_fusion(name, tmp_path):
    from optimum_wc import export_model

    out = tmp_path / "out"
    assert export_model(FIXTURES / name, out, None, load=False) is None
    model = ov.Core().read_model(out / "openvino_model.xml")
    logits = conftest.run_logits(model, IDS, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})

    ref = conftest.dequantized_logits(FIXTURES / name, _reference(name), IDS,
                                      keep=lambda k, v: v.is_floating_point() and not k.endswith((".scales", ".s")))
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-3
    assert np.array_equal(logits.argmax(-1), ref.argmax(-1))  # greedy continuations agree position by position

    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    fc = Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)
                 for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "FullyConnected")
    code_type = {"int4_sym": "i4", "int4_asym": "u4", "int8_sym": "i8", "int8_asym": "u8"}
    expected = Counter(code_type[r["mode"]]
                       for r in json.loads((out / "compression_report.json").read_text())["prequantized"]["layers"])
    assert {k: fc[k] for k in expected} == dict(expected), (fc, expected)


def test_marlin_that_does_not_fit_its_tiles_fails_clearly(tmp_path):
    from optimum_wc import export_model

    src = tmp_path / "marlin"
    shutil.copytree(FIXTURES / "marlin-g128", src, ignore=shutil.ignore_patterns("reference.safetensors"))
    (src / "quantize_config.json").unlink()  # AutoGPTQ writes the settings twice; they must agree, tested elsewhere
    edit_config(src, lambda c: c["quantization_config"].update(group_size=64))
    with pytest.raises(ExportError, match=r"a Marlin checkpoint must be 4-bit, symmetric, without act-order and with "
                                          r"group_size 128 or -1 \(got bits=4, sym=True, desc_act=False, group_size=64\)"):
        export_model(src, tmp_path / "out", None, load=False)
    assert not (tmp_path / "out").exists()
