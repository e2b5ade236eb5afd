"""Export end to end: the user's snippet, save/reload, optimum-intel's own class, errors, no NNCF."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import openvino as ov
import pytest

from optimum_wc import ExportError, WeightCompressionConfig
from optimum_wc.ir.rt_info import read_rt_info


@pytest.fixture(autouse=True)
def forbid_nncf(monkeypatch):
    """Our path never calls NNCF's compression: make any call fail loudly."""
    import nncf

    def boom(*args, **kwargs):
        raise AssertionError("nncf.compress_weights was called")

    monkeypatch.setattr(nncf, "compress_weights", boom)
    import optimum.intel.openvino.quantization as q

    monkeypatch.setattr(q, "_weight_only_quantization", boom)


def int_types(model) -> Counter:
    return Counter(str(op.get_element_type()) for op in model.get_ops()
                   if op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.u4, ov.Type.u8, ov.Type.i4, ov.Type.i8))


def test_users_snippet_export_save_pipeline_reload(llama_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, pipeline

    from optimum_wc import OVModelForCausalLM

    config = WeightCompressionConfig(mode="int4_asym", group_size=64, ratio=0.9)
    model = OVModelForCausalLM.from_pretrained(llama_dir, export=True, quantization_config=config)
    out_dir = tmp_path / "out"
    model.save_pretrained(out_dir)
    pipe = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(llama_dir))
    text = pipe("It is a truth", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith("It is a truth") and len(text) > len("It is a truth")

    files = set(os.listdir(out_dir))
    assert {"openvino_model.xml", "openvino_model.bin", "config.json", "generation_config.json",
            "tokenizer.json", "tokenizer_config.json", "optimum_wc_config.json"} <= files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
    assert WeightCompressionConfig.from_json(out_dir / "optimum_wc_config.json") == config
    saved = ov.Core().read_model(out_dir / "openvino_model.xml")
    assert WeightCompressionConfig.from_dict(read_rt_info(saved)[0]) == config
    assert int_types(saved)["<Type: 'uint4_t'>"] > 0

    # reload: no recompression
    import optimum_wc.engine as engine

    monkeypatch.setattr(engine, "compress_model", lambda *a, **k: pytest.fail("recompressed on reload"))
    reloaded = OVModelForCausalLM.from_pretrained(out_dir)
    assert reloaded.wc_config == config
    ids = AutoTokenizer.from_pretrained(out_dir)("It is a truth", return_tensors="pt")
    a = model.generate(**ids, max_new_tokens=5, do_sample=False)
    b = reloaded.generate(**ids, max_new_tokens=5, do_sample=False)
    assert a.tolist() == b.tolist()


def test_optimum_intels_own_class_uses_our_engine(gpt2_dir):
    from optimum.intel import OVModelForCausalLM

    import optimum_wc  # noqa: F401  (installs the hook)

    config = WeightCompressionConfig(mode="int8_sym")
    model = OVModelForCausalLM.from_pretrained(gpt2_dir, export=True, quantization_config=config)
    recorded, layers = read_rt_info(model.model)
    assert WeightCompressionConfig.from_dict(recorded) == config
    assert {l["mode"] for l in layers} == {"int8_sym"}
    out = model.generate(input_ids=__import__("torch").tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_float_export_stays_float_and_export_model_writes_a_complete_folder(llama_dir, tmp_path):
    from optimum_wc import export_model

    model = export_model(llama_dir, tmp_path / "float", None)
    assert int_types(model.model) == Counter()
    assert not (tmp_path / "float" / "optimum_wc_config.json").exists()
    config = WeightCompressionConfig(mode="int4_sym", group_size=32)
    model = export_model(llama_dir, tmp_path / "int4", config)
    assert int_types(model.model)["<Type: 'int4_t'>"] == 14
    assert model.wc_config == config
    # exporting again over an existing folder replaces it whole
    export_model(llama_dir, tmp_path / "int4", WeightCompressionConfig(mode="int8_asym"))
    assert json.loads((tmp_path / "int4" / "optimum_wc_config.json").read_text())["mode"] == "int8_asym"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float", "int4"]


def test_missing_folder(tmp_path):
    from optimum_wc import OVModelForCausalLM, export_model

    with pytest.raises(ExportError, match="not found: no such folder"):
        export_model(tmp_path / "nope", tmp_path / "out", None)
    with pytest.raises(ExportError, match="not found"):
        OVModelForCausalLM.from_pretrained(str(tmp_path / "nope"), export=True)
    assert not (tmp_path / "out").exists()


def test_not_a_causal_lm(tmp_path):
    from transformers import BertConfig, BertModel

    from optimum_wc import export_model

    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ExportError, match="not a causal language model"):
        export_model(tmp_path / "bert", tmp_path / "out", None)
    with pytest.raises(ExportError, match="no config.json"):
        export_model(tmp_path, tmp_path / "out", None)
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_leaves_no_output(llama_dir, tmp_path):
    """A causal LM whose model type optimum-intel's exporter does not know: clear error, no folder."""
    import shutil

    from optimum_wc import export_model

    src = tmp_path / "odd"
    shutil.copytree(llama_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "xglm"  # a transformers causal LM without an OpenVINO export config
    cfg["architectures"] = ["XGLMForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError) as info:
        export_model(src, tmp_path / "out", WeightCompressionConfig(mode="int8_asym"))
    assert "could not export" in str(info.value) or "unsupported" in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unwritable_output(llama_dir, tmp_path):
    from optimum_wc import export_model

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write the output folder"):
        export_model(llama_dir, blocker / "out", None)


def test_logits_of_exported_int8_match_float(llama_dir, tmp_path):
    from optimum_wc import export_model

    from conftest import run_logits

    f = export_model(llama_dir, tmp_path / "f", None)
    q = export_model(llama_dir, tmp_path / "q", WeightCompressionConfig(mode="int8_asym"))
    ids = np.random.default_rng(0).integers(3, 500, size=(1, 16)).astype(np.int64)
    a, b = run_logits(f.model, ids), run_logits(q.model, ids)
    assert np.linalg.norm(a - b) / np.linalg.norm(a - a.mean()) < 0.02
