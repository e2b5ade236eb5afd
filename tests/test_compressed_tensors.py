"""compressed-tensors checkpoints made by llm-compressor itself: the IR keeps their integers exactly.

The fixtures under ``tests/fixtures/compressed_tensors/`` were written by
``tests/fixtures/make_compressed_tensors.py`` in a throw-away environment with
llm-compressor and compressed-tensors installed (versions in each fixture's
``fixture.json``); each holds the tool's own dequantized weights
(``reference.safetensors``, compressed-tensors' ``decompress`` in the model's
bfloat16).  No test imports those libraries.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

import conftest
from gptq_writer import edit_config, edit_tensors
from optimum_wc import ExportError
from optimum_wc.checkpoints.formats import detect_prequantized
from optimum_wc.checkpoints.reader import PrequantizedCheckpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compressed_tensors"
NAMES = sorted(p.name for p in FIXTURES.glob("*") if (p / "fixture.json").is_file())
IDS = np.random.default_rng(0).integers(3, 500, size=(2, 16)).astype(np.int64)


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "fixture.json").read_text())


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32: one rounding of the exact value."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def _checkpoint_tensors(name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / name / "model.safetensors"))


def _reference_state(name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / name / "reference.safetensors"))


def _unpack(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """compressed-tensors' ``unpack_from_int32`` along the last axis, written here: value k at bits [b k, b k + b)."""
    per, u = 32 // bits, words.astype(np.int64) & 0xFFFFFFFF
    out = np.zeros(words.shape[:-1] + (words.shape[-1] * per,), dtype=np.int64)
    for k in range(per):
        out[..., k::per] = (u >> (bits * k)) & ((1 << bits) - 1)
    return out[..., :count] - (1 << (bits - 1))


def _exact_dequantized(name: str) -> dict:
    """Every quantized linear's ``scale * (q - z)`` in float32 (exact), from the checkpoint's tensors."""
    import torch
    from safetensors.torch import load_file

    meta, tensors = _fixture(name), load_file(str(FIXTURES / name / "model.safetensors"))
    out = {}
    for key in _reference_state(name):
        prefix = key[: -len(".weight")]
        if meta["format"].endswith("fp4-pack-quantized"):
            out[key] = torch.from_numpy(_fp4_dequantized(tensors, prefix, meta))
            continue
        scale = tensors[f"{prefix}.weight_scale"].float().numpy()
        if f"{prefix}.weight_packed" in tensors:
            n_out, n_in = (int(d) for d in tensors[f"{prefix}.weight_shape"])
            q = _unpack(tensors[f"{prefix}.weight_packed"].numpy(), meta["bits"], n_in)
        elif meta.get("type") == "float":
            q = tensors[f"{prefix}.weight"].float().numpy()  # E4M3 values are exact in float32
            n_out, n_in = q.shape
        else:
            q = tensors[f"{prefix}.weight"].numpy().astype(np.int64)
            n_out, n_in = q.shape
        z = np.zeros_like(scale)
        if f"{prefix}.weight_zero_point" in tensors:
            z = _unpack(tensors[f"{prefix}.weight_zero_point"].numpy().T, meta["bits"], n_out).T
        g_idx = (tensors[f"{prefix}.weight_g_idx"].numpy() if f"{prefix}.weight_g_idx" in tensors
                 else np.arange(n_in) // (n_in // scale.shape[1]))
        out[key] = torch.from_numpy(((q - z[:, g_idx]) * scale[:, g_idx]).astype(np.float32))
    return out


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)


def _fp4_dequantized(tensors: dict, prefix: str, meta: dict) -> np.ndarray:
    """compressed-tensors' FP4 dequantization in float32, written here: low nibble first, ``q * (s / global)``
    (NVFP4, the division in float32) or ``q * 2^(e - 127)`` (MXFP4)."""
    import torch

    packed = tensors[f"{prefix}.weight_packed"].numpy()
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    q = np.where(codes & 8, -E2M1[codes & 7], E2M1[codes & 7])
    g = meta["group_size"]
    if meta["format"].startswith("nvfp4"):
        scale = tensors[f"{prefix}.weight_scale"].to(torch.float32).numpy()
        scale = scale / tensors[f"{prefix}.weight_global_scale"].numpy().astype(np.float32)
    else:
        scale = np.ldexp(np.float32(1), tensors[f"{prefix}.weight_scale"].numpy().astype(np.int32) - 127)
    return (q.reshape(q.shape[0], -1, g) * scale.astype(np.float32)[..., None]).reshape(q.shape).astype(np.float32)


def _torch_logits(name: str, ids: np.ndarray) -> np.ndarray:
    """Plain torch, float32: the checkpoint's float weights, and each quantized linear dequantized exactly."""
    import torch

    exact = _exact_dequantized(name)
    for key, tool in _reference_state(name).items():  # the tool's bfloat16 dequantization: one rounding of ours
        assert torch.equal(exact[key].to(torch.bfloat16), tool), key
    return conftest.dequantized_logits(
        FIXTURES / name, exact, ids,
        keep=lambda k, v: v.is_floating_point() and v.dtype != torch.float8_e4m3fn
        and not k.endswith(("_scale", "_zero_point", "_global_scale")))


def test_fixtures_are_there():
    assert {"w4a16-g32-sym", "w4a16-g32-asym", "w8a16-channel", "gptq-w4a16-g32-actorder"} <= set(NAMES), NAMES


@pytest.mark.parametrize("name", NAMES)
def test_detection_and_layers(name):
    meta = _fixture(name)
    fmt = detect_prequantized(FIXTURES / name)
    assert fmt.method == "compressed-tensors"
    assert fmt.checkpoint_format == {"int-quantized": "naive-quantized"}.get(meta["format"], meta["format"])
    assert (fmt.bits, fmt.group_size, fmt.sym) == (meta["bits"], meta["group_size"], meta["symmetric"])
    ckpt = PrequantizedCheckpoint(FIXTURES / name)
    assert len(ckpt.layers) == 14  # 2 blocks x (q, k, v, o, gate, up, down); lm_head is ignored by the recipe
    reference = _reference_state(name)
    for layer in ckpt.layers:
        exact = ckpt.layer_weights(layer).dequantized()  # float32, exact: small integer times an f16 scale
        tool = reference[layer.weight_name].float().numpy()
        if meta["format"].startswith("nvfp4"):  # q * s * (1 / global) against q * (s / global): float32 roundings
            ref = _fp4_dequantized(_checkpoint_tensors(name), layer.prefix, meta)
            assert np.all(np.abs(exact - ref) <= 2.0**-22 * np.abs(ref)), layer.prefix
            assert np.all(np.abs(_bf16_round(exact) - tool) <= 2.0**-8 * np.abs(tool)), layer.prefix
            continue
        # compressed-tensors dequantizes in bfloat16: one rounding of the exact product
        assert np.array_equal(_bf16_round(exact), tool), layer.prefix


@pytest.mark.parametrize("name", NAMES)
def test_export_keeps_the_integers_logits_and_greedy_text(name, tmp_path):
    from optimum_wc import export_model

    out = tmp_path / "out"
    assert export_model(FIXTURES / name, out, None, load=False) is None
    model = ov.Core().read_model(out / "openvino_model.xml")
    out_logits = conftest.run_logits(model, IDS, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    ref = _torch_logits(name, IDS)
    assert np.abs(out_logits - ref).max() / np.abs(ref).max() < 1e-3
    assert np.array_equal(out_logits.argmax(-1), ref.argmax(-1))  # greedy continuations agree position by position

    meta = _fixture(name)
    if meta["format"].endswith("fp4-pack-quantized"):  # E2M1 codes with E4M3 / E8M0 scales, fused
        runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
        fc = Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)
                     for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "FullyConnected")
        assert fc["f4e2m1"] == 14, fc
    elif meta.get("type") == "float":  # FP8: f8e4m3 constants, which the CPU plugin decompresses (not fused)
        kinds = Counter(op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant")
        assert kinds["f8e4m3"] == 14, kinds
    else:
        runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
        fc = Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)
                     for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "FullyConnected")
        code_type = ("i" if meta["symmetric"] else "u") + ("4" if meta["bits"] == 4 else "8")
        assert fc[code_type] == 14, fc
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


BAD = {
    "missing scale": (
        "w4a16-g32-asym",
        lambda d: edit_tensors(d, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight_scale"}),
        r"model\.layers\.1\.mlp\.up_proj\.weight_scale is missing from the checkpoint",
    ),
    "missing zero point": (
        "w4a16-g32-asym",
        lambda d: edit_tensors(d, lambda t: {k: v for k, v in t.items()
                                             if k != "model.layers.0.self_attn.q_proj.weight_zero_point"}),
        r"model\.layers\.0\.self_attn\.q_proj\.weight_zero_point is missing.*asymmetric layer needs",
    ),
    "group size disagrees": (
        "w4a16-g32-sym",
        lambda d: edit_config(d, lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(
            group_size=16)),
        r"weight_scale has shape \[\d+, 2\], but config\.json makes .* must be \[\d+, 4\]",
    ),
    "unknown format": (
        "w4a16-g32-sym",
        lambda d: edit_config(d, lambda c: (c["quantization_config"].update(format="marlin-24"),
                                            c["quantization_config"]["config_groups"]["group_0"].update(format="marlin-24"))),
        r"compressed-tensors format 'marlin-24' is not supported yet",
    ),
    "float weights in a packed format": (
        "w4a16-g32-sym",
        lambda d: edit_config(d, lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(
            type="float")),
        r"4-bit float weights are not supported in 'pack-quantized'",
    ),
    "not compressed": (
        "w4a16-g32-sym",
        lambda d: edit_config(d, lambda c: c["quantization_config"].update(quantization_status="frozen")),
        r"quantization_status='frozen': the weights are not stored compressed",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_fail_clearly_and_write_nothing(case, tmp_path):
    from optimum_wc import export_model

    name, mutate, pattern = BAD[case]
    ckpt = _copy(name, tmp_path)
    mutate(ckpt)
    out = tmp_path / "out" / "model"
    with pytest.raises(ExportError, match=pattern):
        export_model(ckpt, out, None, load=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- the converter alone


def _pack_to_int32(levels: np.ndarray, bits: int, packed_dim: int = 1) -> np.ndarray:
    """compressed-tensors' ``pack_to_int32`` (compressors/quantized_compressors/pack_quantized.py), loop by loop:
    signed levels + 2^(b-1), padded, value k of a word at bits [b k, b k + b)."""
    per = 32 // bits
    values = (levels + (1 << (bits - 1))).astype(np.uint32)
    if packed_dim == 0:
        values = values.T
    rows, cols = values.shape
    padded = np.zeros((rows, -(-cols // per) * per), dtype=np.uint32)
    padded[:, :cols] = values
    out = np.zeros((rows, padded.shape[1] // per), dtype=np.uint32)
    for c in range(out.shape[1]):
        for k in range(per):
            out[:, c] |= padded[:, c * per + k] << np.uint32(bits * k)
    out = out.view(np.int32)
    return np.ascontiguousarray(out.T) if packed_dim == 0 else out


@pytest.mark.parametrize("bits, group_size, sym, act_order", [
    (4, 16, True, False), (4, 16, False, False), (8, -1, True, False), (8, 16, False, True), (4, 0, True, False),
])
def test_pack_quantized_layer_dequantizes_as_compressed_tensors(bits, group_size, sym, act_order):
    from optimum_wc.checkpoints.compressed_tensors import convert_layer
    from optimum_wc.checkpoints.formats import LayerGroup

    rng = np.random.default_rng(bits + group_size)
    n_out, n_in, half = 24, 48, 1 << (bits - 1)
    levels = rng.integers(-half, half, size=(n_out, n_in))
    n_groups = n_in // group_size if group_size > 0 else 1
    scale = rng.uniform(0.01, 0.1, size=(n_out, n_groups)).astype(np.float16)
    zp = np.zeros((n_out, n_groups), dtype=np.int64) if sym else rng.integers(-half, half, size=(n_out, n_groups))
    g_idx = np.arange(n_in) // (group_size if group_size > 0 else n_in)
    if act_order:
        g_idx = g_idx[rng.permutation(n_in)]
    arrays = {"weight_packed": _pack_to_int32(levels, bits), "weight_shape": np.array([n_out, n_in], np.int32),
              "weight_scale": scale if group_size else scale[:1, :1].reshape(1)}
    if not sym:
        arrays["weight_zero_point"] = _pack_to_int32(zp, bits, packed_dim=0)
    if act_order:
        arrays["weight_g_idx"] = g_idx.astype(np.int32)
    group = LayerGroup(("Linear",), bits, group_size, sym, act_order, "pack-quantized")
    lw = convert_layer("l", group, arrays, n_in, n_out)
    s = scale if group_size else np.broadcast_to(scale[:1, :1], (n_out, 1))
    expected = (levels - zp[:, g_idx if group_size else 0 * g_idx]) * s[:, g_idx if group_size else 0 * g_idx].astype(np.float32)
    assert np.array_equal(lw.dequantized(), expected.astype(np.float32))
    assert lw.compressed.mode.value == f"int{4 if bits == 4 else 8}_{'sym' if sym else 'asym'}"
    assert (lw.permutation is not None) == act_order
