"""Data-aware compression: calibration data handling, statistics, sensitivity, AWQ and scale estimation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import openvino as ov
import pytest

from conftest import CALIBRATION_TEXT, run_logits
from optimum_wc import ConfigError, WeightCompressionConfig, compress_model
from optimum_wc.quant.awq_search import awq_loss, search_scales, smoothing_scales
from optimum_wc.calibration.samples import prepare_samples
from optimum_wc.config import CompressWeightsMode as M
from optimum_wc.ir.rt_info import read_rt_info
from optimum_wc.ir.sites import find_weight_sites
from optimum_wc.quant.formats import codebook_of, format_of
from optimum_wc.quant.lowering import dequantize, quantize
from optimum_wc.quant.scale_estimation import estimate_scales
from optimum_wc.calibration.statistics import collect_statistics

CALIB = CALIBRATION_TEXT


def outlier_layer(seed: int = 0, out: int = 48, cin: int = 128, n: int = 512):
    """A weight and inputs where a few input channels carry 20-50x larger activations."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, cin)).astype(np.float32) * 0.05
    x = rng.standard_normal((n, cin)).astype(np.float32)
    x[:, [3, 40, cin - 1]] *= np.array([20.0, 35.0, 50.0], dtype=np.float32)
    return w, x


def output_error(w, deq, x) -> float:
    d = x @ (deq - w).T
    return float(np.vdot(d, d))


@pytest.mark.parametrize("mode, gs", [(M.INT4_ASYM, 32), (M.INT4_SYM, 32), (M.INT4_ASYM, -1), (M.INT8_ASYM, -1),
                                      (M.NF4, 32), (M.NF4, -1), (M.CB4, -1), (M.CB4, 32), (M.INT3_SYM, 32),
                                      (M.INT2_SYM, 32)])
def test_scale_estimation_beats_rtn_on_outliers(mode, gs):
    w, x = outlier_layer()
    codebook = codebook_of(mode)
    rtn = output_error(w, dequantize(quantize(w, mode, gs, 1, codebook=codebook)), x)
    se = estimate_scales(w, x, mode, gs, axis=1, codebook=codebook)
    if not mode.is_integer:  # the codes stay the format's own (NF4 levels, codebook indices)
        assert se.codes.dtype == np.uint8 and se.codes.max() < 16 and se.format.code_type == format_of(mode).code_type
    err = output_error(w, dequantize(se), x)
    assert err < rtn * 0.97, (err, rtn)
    assert np.all(np.isfinite(se.scale)) and np.array_equal(se.scale, se.scale.astype(np.float16).astype(np.float32))


def test_scale_estimation_never_worse_than_rtn_on_plain_data():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    rtn = output_error(w, dequantize(quantize(w, M.INT4_SYM, 16, 1)), x)
    assert output_error(w, dequantize(estimate_scales(w, x, M.INT4_SYM, 16, 1)), x) <= rtn * (1 + 1e-3)


def test_scale_estimation_on_transposed_weight_matches_untransposed():
    w, x = outlier_layer(2, cin=64)
    a = estimate_scales(w, x, M.INT4_ASYM, 16, axis=1)
    b = estimate_scales(np.ascontiguousarray(w.T), x, M.INT4_ASYM, 16, axis=0)
    assert np.allclose(dequantize(a), dequantize(b).T)


@pytest.mark.parametrize("mode", [M.INT4_ASYM, M.NF4, M.CB4, M.INT3_SYM])
def test_awq_scales_beat_rtn_on_outliers(mode):
    w, x = outlier_layer(3)
    mean_abs = np.abs(x).mean(axis=0)
    codebook = codebook_of(mode)
    s, alpha, rel = search_scales([w], [32], x, mean_abs, mode, codebook)
    assert alpha > 0 and rel < 0.97
    ones = np.ones(w.shape[1], np.float32)
    assert awq_loss([w], [32], x, s, mode, codebook) < awq_loss([w], [32], x, ones, mode, codebook)
    assert np.isclose(s.max() * s.min(), 1.0, rtol=1e-4) and np.argmax(s) == w.shape[1] - 1


def test_smoothing_scales_alpha_zero_is_identity():
    assert np.allclose(smoothing_scales(np.array([0.1, 1.0, 10.0]), 0.0), 1.0)


# -- calibration data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


def test_samples_from_file_list_and_inputs_are_deterministic(tokenizer, tmp_path):
    a = prepare_samples(CALIB, tokenizer, subset_size=8, sample_length=32)
    b = prepare_samples(str(CALIB), tokenizer, subset_size=8, sample_length=32)
    assert len(a) == 8 and all(s.shape == (32,) for s in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    texts = CALIB.read_text().split("\n\n")[:200]
    assert len(prepare_samples(texts, tokenizer, 4, 16)) == 4
    ready = prepare_samples([{"input_ids": np.arange(5, 50)}], None, 4, 16)
    assert len(ready) == 1 and ready[0].tolist() == list(range(5, 21))
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(CALIB.read_text()[:20000])
    assert len(prepare_samples(folder, tokenizer, 4, 16)) == 4


def test_samples_from_a_datasets_dataset(tokenizer):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": CALIB.read_text().split("\n\n")[:100]})
    assert len(prepare_samples(ds, tokenizer, 4, 16)) == 4
    with pytest.raises(ConfigError, match="no text column"):
        prepare_samples(Dataset.from_dict({"label": [1, 2]}), tokenizer, 4, 16)


@pytest.mark.parametrize(
    "data, tok, words",
    [
        ([], True, "empty"),
        (["Hi."], True, "too short"),
        ("no/such/file.txt", True, "neither an existing file"),
        (["some text"], False, "tokenizer"),
        ([{"ids": [1, 2]}], True, "without 'input_ids'"),
        (42, True, "not supported"),
    ],
)
def test_bad_calibration_data_messages(tokenizer, data, tok, words):
    with pytest.raises(ConfigError, match=words):
        prepare_samples(data, tokenizer if tok else None, 4, 16)


def test_predefined_name_offline_says_to_pass_local_text(tokenizer):
    with pytest.raises(ConfigError, match="Pass local text"):
        prepare_samples("wikitext2", tokenizer, 4, 16)


def test_auto_dataset_generates_from_the_model(llama_ir, tokenizer, read_ir):
    a = prepare_samples("auto", tokenizer, 4, 24, ov_model=read_ir(llama_ir))
    b = prepare_samples("auto", tokenizer, 4, 24, ov_model=read_ir(llama_ir))
    assert len(a) == 4 and all(s.shape == (24,) for s in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# -- statistics and end to end ------------------------------------------------------------


def test_statistics_match_a_direct_computation(llama_ir, tokenizer, read_ir):
    model = read_ir(llama_ir)
    samples = prepare_samples(CALIB, tokenizer, 3, 16)
    sites = find_weight_sites(model)[0]
    stats = collect_statistics(model, sites, samples, raw_rows=48, precision="f32")
    q = next(s for s in sites if "layers.0.self_attn.q_proj" in s.op_names[0])
    k = next(s for s in sites if "layers.0.self_attn.k_proj" in s.op_names[0])
    assert stats[q.name] is stats[k.name]  # q/k/v share one input
    st = stats[q.name]
    assert st.n_tokens == 48 and st.rows.shape == (48, 64)
    # the rows are the real inputs: their mean over the 48 tokens equals the running mean
    assert np.allclose(st.rows.mean(axis=0), st.mean, atol=1e-5)
    assert np.allclose((st.rows**2).mean(axis=0), st.mean_sq, rtol=1e-4, atol=1e-6)


def test_statistics_run_segment_by_segment_with_one_block_compiled(llama_ir, tokenizer, read_ir, monkeypatch):
    """Each compiled segment holds about one decoder block's weights; the statistics equal one whole-model pass."""
    import optimum_wc.calibration.statistics as statistics

    model = read_ir(llama_ir)
    samples = prepare_samples(CALIB, tokenizer, 3, 16)
    sites = find_weight_sites(model)[0]
    compiled_weights = []
    real_runner = statistics.StatisticsRunner

    def counting_runner(stats_model, precision):
        compiled_weights.append(sum(s.kind == "matmul" for s in find_weight_sites(stats_model)[0]))
        return real_runner(stats_model, precision)

    monkeypatch.setattr(statistics, "StatisticsRunner", counting_runner)
    segmented = collect_statistics(model, sites, samples, raw_rows=48, gram_block=32, precision="f32")
    monkeypatch.setattr(statistics, "SOURCES_PER_SEGMENT", 10**6)  # one segment: the whole model at once
    by_segment = list(compiled_weights)
    compiled_weights.clear()
    whole = collect_statistics(model, sites, samples, raw_rows=48, gram_block=32, precision="f32")
    # 2 decoder layers of 7 MatMuls: one segment per layer (the attention's shape computation may pull in one
    # stray projection of the previous layer), then the lm_head input read from the last boundary
    assert compiled_weights == [14] and len(by_segment) == 3 and max(by_segment) <= 8, by_segment
    for s in sites:
        if s.kind != "matmul":
            continue
        a, b = segmented[s.name], whole[s.name]
        assert a.n_tokens == b.n_tokens
        assert np.allclose(a.sum_sq, b.sum_sq, rtol=1e-5, atol=1e-6)
        assert np.allclose(a.rows, b.rows, rtol=1e-5, atol=1e-5)
        assert np.allclose(a.gram, b.gram, rtol=1e-5, atol=1e-5)


def test_block_grams_equal_direct_gram_of_all_tokens(llama_ir, tokenizer, read_ir):
    model = read_ir(llama_ir)
    samples = prepare_samples(CALIB, tokenizer, 2, 16)
    sites = find_weight_sites(model)[0]
    stats = collect_statistics(model, sites, samples, raw_rows=32, gram_block=128, precision="f32")
    st = stats[sites[1].name]  # 64 channels: one block of 64
    x = st.rows.astype(np.float64)  # all 32 tokens were kept
    direct = (x.T @ x / 32).reshape(2, 32, 2, 32)
    grams = st.group_grams(32)
    assert grams.shape == (2, 32, 32)
    assert np.allclose(grams[0], direct[0, :, 0, :], rtol=1e-4, atol=1e-6)
    assert np.allclose(grams[1], direct[1, :, 1, :], rtol=1e-4, atol=1e-6)
    assert st.group_grams(128) is None  # larger than the collected blocks


def test_statistics_cache_is_reused(llama_ir, tokenizer, read_ir, tmp_path, monkeypatch):
    model = read_ir(llama_ir)
    samples = prepare_samples(CALIB, tokenizer, 2, 16)
    sites = find_weight_sites(model)[0]
    first = collect_statistics(model, sites, samples, cache_path=tmp_path / "stats.npz")
    import optimum_wc.calibration.statistics as statistics

    monkeypatch.setattr(statistics, "StatisticsRunner", lambda *a, **k: pytest.fail("statistics were recomputed"))
    again = collect_statistics(model, sites, samples, cache_path=tmp_path / "stats.npz")
    name = sites[1].name
    assert np.allclose(first[name].mean_abs, again[name].mean_abs) and np.array_equal(first[name].rows, again[name].rows)


@pytest.mark.parametrize(
    "extra",
    [
        dict(awq=True),
        dict(scale_estimation=True),
        dict(awq=True, scale_estimation=True),
        dict(ratio=0.7, sensitivity_metric="hessian_input_activation"),
        dict(ratio=0.7),  # data-aware default: max_activation_variance
        dict(ratio=0.7, sensitivity_metric="mean_activation_magnitude", awq=True),
    ],
)
def test_end_to_end_data_aware_keeps_fused_pattern(llama_ir, tokenizer, read_ir, extra):
    config = WeightCompressionConfig(mode="int4_asym", group_size=32, dataset=str(CALIB), subset_size=8, sample_length=32, **extra)
    ids = np.random.default_rng(0).integers(3, 500, size=(1, 16)).astype(np.int64)
    ref = run_logits(read_ir(llama_ir), ids)
    model = compress_model(read_ir(llama_ir), config, tokenizer=tokenizer)
    _, layers = read_rt_info(model)
    modes = Counter(l["mode"] for l in layers)
    rd = [l for l in layers if l["ratio_defining"]]
    share = sum(l["num_weights"] for l in rd if l["mode"] == "int4_asym") / sum(l["num_weights"] for l in rd)
    assert (0.3 < share < 0.7) if "ratio" in extra else share == 1.0
    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    fc = [op for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
    weights = Counter(op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str) for op in fc)
    assert weights["u4"] == modes["int4_asym"] - sum(1 for l in layers if l["kind"] == "embedding" and l["mode"] == "int4_asym")
    out = run_logits(model, ids)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref - ref.mean()) < 0.3


def test_data_aware_without_data_is_refused():
    with pytest.raises(ConfigError, match="awq=True needs calibration data"):
        WeightCompressionConfig(mode="int4_asym", awq=True)


def test_same_data_same_bytes(llama_ir, tokenizer, read_ir, tmp_path):
    config = WeightCompressionConfig(mode="int4_sym", group_size=32, dataset=str(CALIB), subset_size=4, sample_length=32,
                                     awq=True, scale_estimation=True)
    for i in range(2):
        ov.save_model(compress_model(read_ir(llama_ir), config, tokenizer=tokenizer), tmp_path / f"m{i}.xml")
    assert (tmp_path / "m0.bin").read_bytes() == (tmp_path / "m1.bin").read_bytes()


@pytest.mark.parametrize("extra", [
    dict(scale_estimation=True),
    # up_proj is ignored: the gated-linear absorber of down_proj edits it, and it is never compressed
    dict(ignored_scope={"patterns": [".*up_proj.*"]}),
])
def test_lazy_awq_edits_give_the_eager_bytes(llama_ir, tokenizer, read_ir, tmp_path, monkeypatch, extra):
    """AWQ's weight edits kept pending until each weight is compressed: the same IR as editing the graph at once."""
    import optimum_wc.engine.compress as compress_module
    from optimum_wc.engine.awq import apply_awq

    config = WeightCompressionConfig(mode="int4_asym", group_size=32, dataset=str(CALIB), subset_size=4,
                                     sample_length=32, awq=True, **extra)
    seen = []
    monkeypatch.setattr(compress_module, "apply_awq",
                        lambda *args, lazy: seen.append(lazy) or apply_awq(*args, lazy=lazy))
    ov.save_model(compress_model(read_ir(llama_ir), config, tokenizer=tokenizer), tmp_path / "lazy.xml")
    monkeypatch.setattr(compress_module, "apply_awq", lambda *args, lazy: apply_awq(*args, lazy=False))
    ov.save_model(compress_model(read_ir(llama_ir), config, tokenizer=tokenizer), tmp_path / "eager.xml")
    assert seen == [True]
    assert (tmp_path / "lazy.bin").read_bytes() == (tmp_path / "eager.bin").read_bytes()
    lazy_model, eager_model = ov.Core().read_model(tmp_path / "lazy.xml"), ov.Core().read_model(tmp_path / "eager.xml")
    kinds = lambda m: sorted((op.get_type_name(), op.get_friendly_name()) for op in m.get_ops())  # noqa: E731
    assert kinds(lazy_model) == kinds(eager_model)
    ids = np.random.default_rng(1).integers(3, 500, size=(1, 12)).astype(np.int64)
    assert np.array_equal(run_logits(lazy_model, ids), run_logits(eager_model, ids))


@pytest.mark.parametrize("capacity", [1 << 24, 4096])  # room for everything; room for almost nothing (copies)
def test_spilled_constants_give_the_same_bytes(llama_ir, tokenizer, read_ir, tmp_path, capacity):
    """Compressed constants held in a SpillArena (an unlinked, mapped file) save to the same IR as in memory."""
    from optimum_wc.resources import SpillArena

    config = WeightCompressionConfig(mode="int4_asym", group_size=32, dataset=str(CALIB), subset_size=4,
                                     sample_length=32, awq=True, scale_estimation=True)
    ov.save_model(compress_model(read_ir(llama_ir), config, tokenizer=tokenizer), tmp_path / "memory.xml")
    with SpillArena(tmp_path, capacity) as arena:
        model = compress_model(read_ir(llama_ir), config, tokenizer=tokenizer, spill=arena)
        ov.save_model(model, tmp_path / "spilled.xml")
        integer_bytes = sum(op.get_byte_size() for op in model.get_ops() if op.get_type_name() == "Constant"
                            and op.get_element_type() in (ov.Type.u4, ov.Type.u8))
        del model
        assert (arena.used >= integer_bytes) if capacity > 4096 else (0 < arena.used <= 4096), (arena.used, integer_bytes)
    assert (tmp_path / "spilled.bin").read_bytes() == (tmp_path / "memory.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.bin", "memory.xml", "spilled.bin", "spilled.xml"]


@pytest.mark.parametrize("kwargs", [
    dict(mode="nf4", awq=True, scale_estimation=True),
    dict(mode="cb4", group_size=32, awq=True, scale_estimation=True),
    dict(mode="codebook", codebook=[-3, -2, -1.2, -0.6, -0.2, 0, 0.2, 0.6, 1.2, 2, 3], scale_estimation=True),
    dict(mode="int3_sym", scale_estimation=True),
    dict(mode="nf4", gptq=True),
    dict(mode="cb4", lora_correction=True),
    dict(mode="int2_sym", gptq=True, scale_estimation=True),
])
def test_data_aware_algorithms_on_the_other_formats(llama_ir, tokenizer, read_ir, kwargs):
    """Each runs end to end, keeps its format in the IR, and beats round to nearest on the calibration text."""
    kwargs = dict(kwargs)
    kwargs.setdefault("group_size", 32)
    calib = dict(dataset=str(CALIB), subset_size=8, sample_length=32)
    samples = prepare_samples(str(CALIB), tokenizer, subset_size=8, sample_length=32)
    ids = np.stack(samples[:2]).astype(np.int64)
    ref = run_logits(read_ir(llama_ir), ids)
    rtn_kwargs = {k: v for k, v in kwargs.items() if k not in ("awq", "scale_estimation", "gptq", "lora_correction")}
    rtn = run_logits(compress_model(read_ir(llama_ir), WeightCompressionConfig(**rtn_kwargs)), ids)
    model = compress_model(read_ir(llama_ir), WeightCompressionConfig(**kwargs, **calib), tokenizer=tokenizer)
    out = run_logits(model, ids)
    _, layers = read_rt_info(model)
    assert sum(l["mode"] == kwargs["mode"] for l in layers) == 14
    codes = {op.get_friendly_name(): op.get_element_type().get_type_name() for op in model.get_ops()
             if op.get_type_name() == "Constant"}
    fmt = format_of(M(kwargs["mode"]))
    key = "{}_nncf_codebook_idxs" if fmt.codebook else "{}"
    assert {codes[key.format(l["name"])] for l in layers if l["mode"] == kwargs["mode"]} == {fmt.code_type}
    err = lambda y: float(np.linalg.norm(y - ref))  # noqa: E731
    assert err(out) < err(rtn), (err(out), err(rtn))
