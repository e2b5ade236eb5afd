"""Export and compression across architectures (issue 16), on tiny random models built from each config.

Per architecture of :data:`optimum_wc.models.TINY_ARCHITECTURES` (hidden 64, 2 layers, vocabulary 512):

* the float IR computes transformers' logits (f32 runtime, relative error <= 1e-4), sliding windows shorter
  than the 24-token test sequence included;
* every seed configuration compresses it; the CPU plugin runs every compressed MatMul on its integer weight
  (FullyConnected, or GatherMatmul for MoE experts); the logits stay within the configuration's bound of the
  float model's; ``pipeline("text-generation")`` generates with the result;
* the one-step export (``export_model`` with a config: weights streamed where possible) writes the same bytes
  as exporting float and compressing the IR;
* in MoE models every expert of every layer is compressed;
* data-aware configs (AWQ + scale estimation, GPTQ + scale estimation) run on a dense and an MoE model.

Also: the fold of the exporter's ``postponed_constant`` weight transposes (a float gpt-oss streamed used to fail
writing its IR), the Gemma exporters' transformers cap lifted only for verified architectures, and the errors
for architectures optimum-intel cannot export.  Bounds of the compressed logits: see :data:`SEEDS`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

import conftest
from optimum_wc import WeightCompressionConfig, compress_model, export_model
from optimum_wc.export.pipeline import compress_ir_folder
from optimum_wc.ir.inventory import parameters_by_type, stored_weights
from optimum_wc.ir.rt_info import read_rt_info
from optimum_wc.models import TINY_ARCHITECTURES, build_tiny_model

ARCHITECTURES = sorted(TINY_ARCHITECTURES)
MOE = {"qwen3_moe": 4, "qwen2_moe": 4, "mixtral": 4}  # model_type -> experts per layer
LAYERS, EXPERT_PROJECTIONS = 2, 3  # gate, up (split by the exporter) and down
# Seed configurations, with the bound of the relative L2 error of the logits against the float model's,
# ||out - ref|| / ||ref - mean(ref)||: 1.5x the largest of the 15 architectures here (INT4 g32 r0.5: 0.095;
# g64 r0.8: 0.185; g128 r0.8: 0.188; g128 r1.0: 0.236; sym g64 r0.8: 0.184; INT8: 0.017, all Gemma-2/3).
# Random N(0, 0.02) weights have no outliers, so every layer's INT4 error is about the same and adds up over
# 2 layers; larger groups and larger INT4 shares give larger errors, INT8 about 16x smaller.
SEEDS = {
    "int4_asym_g32_r0.5": (dict(mode="int4_asym", group_size=32, ratio=0.5), 0.15),
    "int4_asym_g64_r0.8": (dict(mode="int4_asym", group_size=64, ratio=0.8), 0.28),
    "int4_asym_g128_r0.8": (dict(mode="int4_asym", group_size=128, ratio=0.8), 0.28),
    "int4_asym_g128_r1.0": (dict(mode="int4_asym", group_size=128, ratio=1.0), 0.35),
    "int4_sym_g64_r0.8": (dict(mode="int4_sym", group_size=64, ratio=0.8), 0.28),
    "int8_asym": (dict(mode="int8_asym"), 0.03),
}
CODE_TYPES = {"int4_asym": "u4", "int4_sym": "i4", "int8_asym": "u8"}
IDS = np.random.default_rng(0).integers(3, 500, size=(2, 24)).astype(np.int64)
F32 = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


class Exports:
    """Each architecture's tiny checkpoint, its transformers logits and its float IR, made once per module."""

    def __init__(self, root: Path):
        self.root, self._done, self.tokenizer = root, {}, conftest.build_tokenizer()

    def __call__(self, arch: str) -> dict:
        if arch not in self._done:
            import torch
            from transformers import AutoModelForCausalLM

            ckpt = build_tiny_model(arch, self.root / arch / "model", tokenizer=self.tokenizer)
            with torch.no_grad():
                torch_model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
                ref = torch_model(torch.from_numpy(IDS)).logits.float().numpy()
            export_model(ckpt, self.root / arch / "float", None, load=False)
            float_logits = conftest.run_logits(_ir(self.root / arch / "float"), IDS, F32)
            self._done[arch] = {"ckpt": ckpt, "float": self.root / arch / "float", "torch_logits": ref,
                                "float_logits": float_logits}
        return self._done[arch]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("architectures"))


def _ir(folder: Path):
    return ov.Core().read_model(folder / "openvino_model.xml")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_float_ir_computes_the_logits_of_transformers(arch, exports):
    e = exports(arch)
    logits, ref = e["float_logits"], e["torch_logits"]
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-4


def _runtime_weight_types(compiled) -> Counter:
    """(kernel, weight precision) of every FullyConnected / GatherMatmul of the compiled model."""
    found = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        kernel = op.get_rt_info()["layerType"].astype(str)
        if kernel in ("FullyConnected", "GatherMatmul"):
            found[kernel, op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str)] += 1
    return found


def _expected_kernels(model) -> Counter:
    """(kernel, weight precision) each compressed MatMul should run as, from the engine's layer records.

    3-D (MoE expert) weights run in GatherMatmul, the others in FullyConnected.  A weight of one output
    channel (Qwen2-MoE's shared-expert gate, 1 x hidden) the plugin does not fuse: its decompression runs as
    an Eltwise before a float FullyConnected (NNCF's IR alike; 64 weights here).
    """
    types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops()}
    expected = Counter()
    for record in read_rt_info(model)[1]:
        shape = record["shape"]
        for op in record["ops"]:
            if types[op] == "MatMul":
                precision = "f32" if shape[-2] == 1 else CODE_TYPES[record["mode"]]
                expected["GatherMatmul" if len(shape) == 3 else "FullyConnected", precision] += 1
    return expected


@pytest.mark.parametrize("seed", sorted(SEEDS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_seed_configurations_compress_fuse_and_generate(arch, seed, exports, tmp_path):
    import torch
    from transformers import AutoTokenizer, pipeline

    from optimum_wc import OVModelForCausalLM

    kwargs, bound = SEEDS[seed]
    e = exports(arch)
    out = tmp_path / "out"
    compress_ir_folder(e["float"], out, WeightCompressionConfig(**kwargs))
    model = _ir(out)

    # every weight is compressed, in the primary mode or the INT8 backup, as the engine recorded
    weights = stored_weights(model)
    assert [w.op for w in weights if not w.compressed] == []
    _, layers = read_rt_info(model)
    assert {r["mode"] for r in layers} <= {kwargs["mode"], "int8_asym"}
    by_mode = Counter()
    for r in layers:
        by_mode[CODE_TYPES[r["mode"]]] += r["num_weights"]
    assert parameters_by_type(weights) == dict(by_mode)

    # one compiled model (f32) for the kernels, the logits and the pipeline
    ov_model = OVModelForCausalLM.from_pretrained(out, ov_config=F32)
    runtime = ov_model.request.get_compiled_model()
    assert _runtime_weight_types(runtime) == _expected_kernels(model)
    with torch.no_grad():
        logits = ov_model(input_ids=torch.from_numpy(IDS), attention_mask=torch.ones_like(torch.from_numpy(IDS)))
    ref = e["float_logits"]
    rel = np.linalg.norm(logits.logits.numpy() - ref) / np.linalg.norm(ref - ref.mean())
    assert 0 < rel < bound, rel

    tokenizer = AutoTokenizer.from_pretrained(e["ckpt"])
    pipe = pipeline("text-generation", model=ov_model, tokenizer=tokenizer)
    prompt = "It is a truth"
    text = pipe(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith(prompt) and len(tokenizer(text)["input_ids"]) > len(tokenizer(prompt)["input_ids"])


def _bins_equal(a: Path, b: Path) -> bool:
    return (a / "openvino_model.bin").read_bytes() == (b / "openvino_model.bin").read_bytes()


# Streamed: the checkpoint's weights are bound to the traced graph.  Not streamed (a float IR is exported first):
# GPT-2 (its Conv1D weights are transposed into new constants) and the MoE models (transformers saves their
# experts one by one and fuses them on load, so the checkpoint has no tensor of the model's shape).
STREAMED = {"gpt2": False, "qwen3_moe": False, "qwen2_moe": False, "mixtral": False}


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3_moe"])
def test_one_step_export_writes_what_float_export_then_compression_writes(arch, exports, tmp_path):
    kwargs, _ = SEEDS["int4_asym_g64_r0.8"]
    e = exports(arch)
    export_model(e["ckpt"], tmp_path / "one", WeightCompressionConfig(**kwargs), load=False)
    compress_ir_folder(e["float"], tmp_path / "two", WeightCompressionConfig(**kwargs))
    assert _bins_equal(tmp_path / "one", tmp_path / "two")
    report = json.loads((tmp_path / "one" / "compression_report.json").read_text())
    assert report["resources"]["streamed"] is STREAMED.get(arch, True)


@pytest.mark.parametrize("arch", sorted(MOE))
def test_every_expert_of_every_layer_is_compressed(arch, exports, tmp_path):
    """Each layer's gate, up and down experts are u4 (int4 g32, ratio 1), each expert within INT4's error."""
    e = exports(arch)
    compress_ir_folder(e["float"], tmp_path / "out", WeightCompressionConfig(mode="int4_asym", group_size=32))
    model, float_model = _ir(tmp_path / "out"), _ir(e["float"])
    experts = MOE[arch]
    compressed = [w for w in stored_weights(model) if w.op_type == "MatMul" and w.shape[0] == experts and "expert" in w.op]
    assert len(compressed) == LAYERS * EXPERT_PROJECTIONS
    assert {w.element_type for w in compressed} == {"u4"}
    assert sum(w.shape[0] for w in compressed) == LAYERS * EXPERT_PROJECTIONS * experts
    # every expert slice is quantized on its own: its dequantized weight is close to its float weight
    for w in compressed:
        deq, ref = _weight_value(model, w.op), _weight_value(float_model, w.op)
        assert deq.shape == ref.shape and deq.shape[0] == experts
        for x in range(experts):
            err = np.linalg.norm(deq[x] - ref[x]) / np.linalg.norm(ref[x])
            assert 0 < err < 0.15, (w.op, x, err)
    runtime = _runtime_weight_types(ov.Core().compile_model(model, "CPU", F32))
    assert runtime[("GatherMatmul", "u4")] == LAYERS * EXPERT_PROJECTIONS


def _weight_value(model, op_name: str) -> np.ndarray:
    """The value of the weight input of the MatMul ``op_name`` (its decompression subgraph evaluated), [.., out, in]."""
    import openvino.opset13 as ops

    matmul = next(op for op in model.get_ordered_ops() if op.get_friendly_name() == op_name)
    weight = matmul.input_value(1)
    value = ov.Core().compile_model(ov.Model([ops.result(weight)], []), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({})
    w = np.asarray(next(iter(value.values())), dtype=np.float32)
    return w if matmul.get_attributes()["transpose_b"] else np.swapaxes(w, -1, -2)


def test_postponed_weight_transposes_are_folded_before_streaming_the_ir(tmp_path):
    """A weight behind a Transpose the exporter marked ``postponed_constant`` (folded by OpenVINO's serializer).

    Before the fold the streamed writer failed with "constant N of the XML does not match the written .bin",
    and the weight was not even a site.  Now it is compressed, in the same bytes as the float IR's save,
    read back and compressed.
    """
    import openvino.opset13 as ops

    from optimum_wc.engine.streaming import compress_to_ir

    def float_model():
        x = ops.parameter([-1, 64], np.float32, name="x")
        w = ops.constant(np.random.default_rng(0).normal(size=(2, 64, 96)).astype(np.float32), name="experts")
        t = ops.transpose(w, ops.constant(np.array([0, 2, 1], dtype=np.int64)))
        t.get_rt_info()["postponed_constant"] = True
        y = ops.matmul(ops.broadcast(ops.unsqueeze(x, 0), ops.constant(np.array([2, 1, 64]))), t, False, True)
        return ov.Model([ops.result(y)], [x], "experts")

    config = WeightCompressionConfig(mode="int4_asym", group_size=32)
    (tmp_path / "streamed").mkdir()
    compress_to_ir(float_model(), config, tmp_path / "streamed" / "openvino_model.xml")
    ov.save_model(float_model(), tmp_path / "float" / "openvino_model.xml", compress_to_fp16=False)
    compress_ir_folder(tmp_path / "float", tmp_path / "classic", config)
    assert _bins_equal(tmp_path / "streamed", tmp_path / "classic")
    weights = stored_weights(_ir(tmp_path / "streamed"))
    assert [(w.element_type, w.shape) for w in weights] == [("u8", (2, 96, 64))]  # the last MatMul: INT8 backup
    # compress_model on the converter's in-memory model (not saved first) finds and compresses the same weight
    in_memory = compress_model(float_model(), config)
    ov.save_model(in_memory, tmp_path / "mem" / "openvino_model.xml", compress_to_fp16=False)
    assert _bins_equal(tmp_path / "mem", tmp_path / "classic")


def test_float_moe_with_transposed_experts_streams_and_compresses_every_expert(tmp_path):
    """gpt-oss saved float (bfloat16): its experts are one [experts, in, out] tensor per projection, which the
    exporter transposes (marked ``postponed_constant``).  The one-step export used to fail with "internal error:
    constant 105 of the XML does not match the written .bin"."""
    import mxfp4_writer

    tokenizer = Path(__file__).resolve().parent / "fixtures" / "compressed_tensors" / "w4a16-g32-sym"
    ckpt = mxfp4_writer.build_float(tmp_path / "gpt-oss", tokenizer)
    # the router stays float: on these random weights some token's top-2 experts are a near tie, which the INT8
    # router (or INT8 embeddings) flips, a discrete change of the logits (8%) unrelated to the experts checked here
    config = WeightCompressionConfig(mode="int8_asym", ignored_scope={"patterns": [".*router.*"]})
    export_model(ckpt, tmp_path / "one", config, load=False)
    export_model(ckpt, tmp_path / "float", None, load=False)
    compress_ir_folder(tmp_path / "float", tmp_path / "two", config)
    assert _bins_equal(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "one" / "compression_report.json").read_text())["resources"]["streamed"] is True
    model = _ir(tmp_path / "one")
    experts = [w for w in stored_weights(model) if "experts" in w.op]
    assert [(w.element_type, w.shape[0]) for w in experts] == [("u8", 4)] * 4  # 2 layers x (gate_up, down)
    ref = conftest.run_logits(_ir(tmp_path / "float"), IDS, F32)
    rel = np.linalg.norm(conftest.run_logits(model, IDS, F32) - ref) / np.linalg.norm(ref - ref.mean())
    assert 0 < rel < 0.03


def test_exporter_caps_are_lifted_only_for_verified_architectures_during_an_export():
    import transformers
    from packaging.version import Version

    from optimum_wc.export.exporters import VERIFIED_BEYOND_CAP, export_config_class, verified_exporters

    gemma2, dbrx = export_config_class("gemma2"), export_config_class("dbrx")
    assert (gemma2.MAX_TRANSFORMERS_VERSION, dbrx.MAX_TRANSFORMERS_VERSION) == ("5.0", "4.57.6")  # optimum-intel 2.2
    lifted = Version(transformers.__version__) <= Version(VERIFIED_BEYOND_CAP["gemma2"])
    with verified_exporters("gemma2"):
        assert gemma2.MAX_TRANSFORMERS_VERSION == (transformers.__version__ if lifted else "5.0")
        assert export_config_class("gemma").MAX_TRANSFORMERS_VERSION == "5.0"  # its base class is left alone
    assert gemma2.MAX_TRANSFORMERS_VERSION == "5.0" and "MAX_TRANSFORMERS_VERSION" not in gemma2.__dict__
    with verified_exporters("dbrx"):  # not verified: optimum-intel's cap stays
        assert dbrx.MAX_TRANSFORMERS_VERSION == "4.57.6"


def _config_only(path: Path, model_type: str, architecture: str, **fields) -> Path:
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **fields)
    config.architectures = [architecture]
    config.save_pretrained(path)
    return path


@pytest.mark.parametrize("model_type, architecture, message", [
    ("olmoe", "OlmoeForCausalLM", r"the architecture 'olmoe' \(OlmoeForCausalLM\) is not supported by optimum-intel "
                                  r"[\d.]+'s OpenVINO exporter for the task 'text-generation-with-past'"),
    ("dbrx", "DbrxForCausalLM", r"exports the architecture 'dbrx' \(DbrxForCausalLM\) only with transformers <= "
                                r"4.57.6; transformers [\d.]+ is installed: install transformers<=4.57.6"),
])
def test_an_architecture_optimum_intel_cannot_export_fails_first_naming_it(model_type, architecture, message, tmp_path):
    from optimum_wc import ExportError

    ckpt = _config_only(tmp_path / "model", model_type, architecture)
    with pytest.raises(ExportError, match=message):
        export_model(ckpt, tmp_path / "out", WeightCompressionConfig(mode="int8_asym"), load=False)
    assert not (tmp_path / "out").exists()


def test_a_transformers_newer_than_verified_keeps_the_cap_and_says_which_to_install(tmp_path, monkeypatch):
    from optimum_wc import ExportError
    from optimum_wc.export import exporters

    monkeypatch.setitem(exporters.VERIFIED_BEYOND_CAP, "gemma2", "5.0.1")
    ckpt = _config_only(tmp_path / "model", "gemma2", "Gemma2ForCausalLM")
    with pytest.raises(ExportError, match=r"'gemma2' \(Gemma2ForCausalLM\) only with transformers <= 5.0 \(optimum-wc "
                                          r"has verified it up to 5.0.1\); .* install transformers<=5.0.1"):
        export_model(ckpt, tmp_path / "out", None, load=False)


CALIBRATION = dict(subset_size=8, sample_length=32)
DATA_AWARE = {"awq_se": dict(awq=True, scale_estimation=True), "gptq_se": dict(gptq=True, scale_estimation=True)}


@pytest.mark.parametrize("method", sorted(DATA_AWARE))
@pytest.mark.parametrize("arch", ["phi3", "qwen3_moe"])
def test_data_aware_compression_runs_and_says_what_it_left_to_round_to_nearest(arch, method, exports, tmp_path):
    """AWQ + scale estimation and GPTQ + scale estimation on Phi-3 (fused qkv and gate_up) and Qwen3-MoE.

    The 2-D layers are calibrated; the experts [experts, out, in] are rounded to nearest (the data-aware steps
    take 2-D weights), which each expert layer's record says.  Logits stay within the data-free INT4 bound.
    """
    e = exports(arch)
    texts = [conftest._training_text()[i * 300:(i + 1) * 300] for i in range(8)]
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, dataset=texts, **CALIBRATION,
                                     **DATA_AWARE[method])
    compress_ir_folder(e["float"], tmp_path / "out", config)
    model = _ir(tmp_path / "out")
    _, layers = read_rt_info(model)
    experts = [r for r in layers if len(r["shape"]) == 3]
    assert len(experts) == (LAYERS * EXPERT_PROJECTIONS if arch in MOE else 0)
    assert all("rounded to nearest" in r["note"] for r in experts)
    assert not any("rounded to nearest" in r["note"] for r in layers if len(r["shape"]) == 2)
    ref = e["float_logits"]
    rel = np.linalg.norm(conftest.run_logits(model, IDS, F32) - ref) / np.linalg.norm(ref - ref.mean())
    assert 0 < rel < SEEDS["int4_asym_g128_r1.0"][1], rel


def test_one_step_data_aware_export_of_a_new_architecture(exports, tmp_path):
    """``export_model`` with AWQ + scale estimation on Gemma-3 (streamed weights, calibrated in memory)."""
    e = exports("gemma3_text")
    texts = [conftest._training_text()[i * 300:(i + 1) * 300] for i in range(8)]
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, dataset=texts, awq=True, scale_estimation=True,
                                     **CALIBRATION)
    model = export_model(e["ckpt"], tmp_path / "out", config)
    assert json.loads((tmp_path / "out" / "compression_report.json").read_text())["resources"]["streamed"] is True
    ref = e["float_logits"]
    rel = np.linalg.norm(conftest.run_logits(_ir(tmp_path / "out"), IDS, F32) - ref) / np.linalg.norm(ref - ref.mean())
    assert 0 < rel < SEEDS["int4_asym_g128_r1.0"][1], rel
    import torch

    assert tuple(model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, min_new_tokens=3).shape) == (1, 6)
    from optimum_wc.config.options import DATASET_NOT_RECORDED

    # the list of texts is not written into optimum_wc_config.json; the config reads back saying so
    assert (model.wc_config.awq, model.wc_config.dataset) == (True, DATASET_NOT_RECORDED)
