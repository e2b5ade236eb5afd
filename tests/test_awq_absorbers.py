"""AWQ's absorbers: where the inverse smoothing scale goes, and that moving it there leaves the float model's function."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CALIBRATION_TEXT
from optimum_wc import WeightCompressionConfig
from optimum_wc.calibration.runners import StatefulRunner, stateful_inputs
from optimum_wc.calibration.samples import prepare_samples
from optimum_wc.calibration.statistics import collect_statistics
from optimum_wc.engine import awq as awq_module
from optimum_wc.engine.planning import plan_layers
from optimum_wc.engine.sensitivity import sensitivity_function
from optimum_wc.ir.sites import find_weight_sites, read_weight, set_float_weight
from optimum_wc.ir.value_path import value_path
from optimum_wc.quant.awq_search import smoothing_scales, tied_means


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


@pytest.fixture(scope="module")
def gains_ir(llama_dir, tmp_path_factory):
    """The tiny Llama with random norm gains (all-ones gains are folded away by the converter: no Multiply to absorb)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_wc.export.float_ir import export_float_ir

    out = tmp_path_factory.mktemp("tiny-llama-gains")
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
    model.save_pretrained(out / "model")
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(out / "model")
    export_float_ir(out / "model", out / "ir")
    return out / "ir" / "openvino_model.xml"


def test_tied_means_average_within_each_class():
    m = np.array([1.0, 3.0, 10.0, 2.0, 4.0], dtype=np.float32)
    classes = np.array([0, 0, 1, 2, 2])
    assert np.array_equal(tied_means(m, classes), np.array([2.0, 2.0, 10.0, 3.0, 3.0], dtype=np.float32))
    s = smoothing_scales(tied_means(m, classes), 0.7)
    assert s[0] == s[1] and s[3] == s[4] and s[0] != s[2]


def _o_proj_input(model, layer: int):
    o_proj = next(op for op in model.get_ordered_ops()
                  if op.get_type_name() == "MatMul" and f"layers.{layer}.self_attn.o_proj" in op.get_friendly_name())
    return o_proj.input_value(0).get_node()


def test_value_path_maps_each_attention_channel_to_its_grouped_query_value_channel(llama_ir, read_ir):
    """Tiny Llama: 4 heads of 16 share 2 KV heads; head h reads KV head h // 2 (transformers' repeat_kv)."""
    model = read_ir(llama_ir)
    found = value_path(_o_proj_input(model, 0))
    assert found is not None
    matmul, carried = found
    assert "v_proj" in matmul.get_friendly_name()
    c = np.arange(64)
    assert np.array_equal(carried, (c // 16 // 2) * 16 + c % 16)


def test_value_path_refuses_a_path_that_mixes_channels(llama_ir, read_ir):
    """Inputs of q/k/v (a norm's output) and of down_proj (a gated product) are not attention's value path."""
    model = read_ir(llama_ir)
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul" and ("q_proj" in op.get_friendly_name() or "down_proj" in op.get_friendly_name()):
            assert value_path(op.input_value(0).get_node()) is None


def _two_step_logits(model, ids: np.ndarray) -> np.ndarray:
    """Logits of a prompt, then of its continuation read through the KV cache (so the cached values count)."""
    runner = StatefulRunner(model)
    first = runner.run(ids[:, :8])["logits"].copy()
    second = runner.request.infer(stateful_inputs(ids[:, 8:], 8, runner.input_names))["logits"].copy()
    return np.concatenate([first, second], axis=1)


@pytest.mark.parametrize("mode", ["int4_asym", "nf4"])
def test_absorbed_scales_keep_the_float_model_exact(gains_ir, read_ir, tokenizer, monkeypatch, mode):
    """Strong smoothing scales (alpha = 1) moved upstream, weights left float: the logits do not change.

    Covers every absorber of a Llama block: the norms (q/k/v, gate/up), the
    gated product (down_proj) and the value projection behind grouped-query
    attention (o_proj), with the KV cache read on a second call.
    """
    model = read_ir(gains_ir)
    ids = np.random.default_rng(0).integers(3, 500, size=(1, 14)).astype(np.int64)
    reference = _two_step_logits(read_ir(gains_ir), ids)

    config = WeightCompressionConfig(mode=mode, group_size=16, dataset=str(CALIBRATION_TEXT), subset_size=4,
                                     sample_length=32, awq=True)
    sites, _ = find_weight_sites(model)
    samples = prepare_samples(config.dataset, tokenizer, config.subset_size, config.sample_length, ov_model=model)
    stats = collect_statistics(model, sites, samples, raw_rows=16)
    plans = plan_layers(sites, config, sensitivity_function(config.effective_sensitivity_metric, stats))
    forced = lambda weights, group_sizes, rows, mean_abs, *rest: (smoothing_scales(mean_abs, 1.0), 1.0, 0.5)  # noqa: E731
    monkeypatch.setattr(awq_module, "search_scales", forced)
    records = awq_module.apply_awq(model, plans, stats, config.mode, lazy=True)
    for p in plans:  # make every pending edit, keep the weights float
        if p.site.pending:
            set_float_weight(p.site, read_weight(p.site))

    absorbed = {next(k for k in ("q_proj", "o_proj", "gate_proj", "down_proj") if any(k in n for n in r["layers"])):
                r["absorbed_by"] for r in records}
    assert len(records) == 8 and absorbed == {"q_proj": "norm gain (Multiply by a constant)",
                        "o_proj": "attention value projection",
                        "gate_proj": "norm gain (Multiply by a constant)",
                        "down_proj": "gated linear (Multiply fed by a MatMul)"}
    assert not [op for op in model.get_ops() if "awq_multiply" in op.get_friendly_name()]
    out = _two_step_logits(model, ids)
    assert np.abs(out - reference).max() <= 1e-3 * np.abs(reference).max()  # float32 rounding; a wrong map: ~1e-1


def test_compressed_awq_model_has_no_inserted_multiply(gains_ir, read_ir, tokenizer):
    """End to end with the real search: no activation Multiply is added, and the model stays close to float."""
    from conftest import run_logits
    from optimum_wc import compress_model

    config = WeightCompressionConfig(mode="int4_asym", group_size=16, dataset=str(CALIBRATION_TEXT), subset_size=4,
                                     sample_length=32, awq=True)
    model = compress_model(read_ir(gains_ir), config, tokenizer=tokenizer)
    assert not [op for op in model.get_ops() if op.get_type_name() == "Multiply" and "awq" in op.get_friendly_name()]
    ids = np.random.default_rng(2).integers(3, 500, size=(1, 16)).astype(np.int64)
    ref = run_logits(read_ir(gains_ir), ids)
    out = run_logits(model, ids)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref - ref.mean()) < 0.3


def test_statistics_of_the_smoothed_input_equal_statistics_of_x_over_s():
    """After AWQ a group reads ``X / s``: its statistics (scale estimation's input) must be those of ``X / s``."""
    from optimum_wc.calibration.statistics import ActivationStats

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 10, 8)).astype(np.float32)
    f = rng.uniform(0.2, 3.0, size=8)

    def stats_of(a: np.ndarray) -> ActivationStats:
        st = ActivationStats(channels=8, gram_block=4)
        st.add_moments(np.stack([a.sum(1), (a * a).sum(1), np.abs(a).sum(1), np.abs(a).max(1)], axis=1), 10)
        flat = a.reshape(-1, 8).astype(np.float64)
        st.add_gram(np.stack([flat[:, b:b + 4].T @ flat[:, b:b + 4] for b in (0, 4)]))
        st.add_rows(a)
        return st

    scaled = stats_of(x)
    scaled.scale_channels(f)
    direct = stats_of((x * f).astype(np.float32))
    for name in ("sum", "sum_sq", "sum_abs", "max_abs", "rows", "gram"):
        assert np.allclose(getattr(scaled, name), getattr(direct, name), rtol=1e-5, atol=1e-6), name
    assert np.allclose(scaled.group_grams(4), direct.group_grams(4), rtol=1e-5)
