"""``eval --reference`` takes the Transformers checkpoint the model came from, exported once to a float IR and cached.

The cache (``$OPTIMUM_WC_CACHE``, pointed at a temporary folder here) holds
one IR per checkpoint folder, keyed by a fingerprint of its files and of the
exporting packages' versions; the figures against the checkpoint are those
against the float IR exported from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optimum_wc import ExportError, WeightCompressionConfig

KINDS = {"str": str, "Path": Path}


@pytest.fixture(scope="module")
def compressed(llama_ir, tmp_path_factory) -> Path:
    from optimum_wc.export.pipeline import compress_ir_folder

    out = tmp_path_factory.mktemp("eval-ref") / "int4"
    compress_ir_folder(llama_ir.parent, out, WeightCompressionConfig(mode="int4_asym", group_size=32))
    return out


@pytest.fixture(scope="module")
def tokens(llama_dir) -> np.ndarray:
    from transformers import AutoTokenizer

    from optimum_wc import evaluation

    return evaluation.tokenize_prefix(AutoTokenizer.from_pretrained(llama_dir), evaluation.sample_text(), 256)


def _eval(model: Path, reference: Path, cache: Path, json_file: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OPTIMUM_WC_CACHE=str(cache))
    argv = [sys.executable, "-m", "optimum_wc", "eval", model, "--reference", reference, "--tokens", "256",
            "--window", "128", "--max-new-tokens", "0", "--json", json_file]
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=600)


def test_eval_against_the_checkpoint_equals_eval_against_its_float_ir(compressed, llama_dir, llama_ir, tmp_path):
    cache = tmp_path / "cache"
    first = _eval(compressed, llama_dir, cache, tmp_path / "ckpt.json")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Exporting the float reference" in first.stderr
    by_ir = _eval(compressed, llama_ir.parent, cache, tmp_path / "ir.json")
    assert by_ir.returncode == 0, by_ir.stderr[-3000:]
    ckpt, ir = (json.loads((tmp_path / f"{n}.json").read_text())["models"] for n in ("ckpt", "ir"))
    for key in ("perplexity", "top1_agreement", "kl_divergence", "size_bytes"):
        assert ckpt["model"][key] == ir["model"][key] and ckpt["reference"][key] == ir["reference"][key], key
    assert ckpt["reference"]["top1_agreement"] == 1.0 and ckpt["model"]["top1_agreement"] < 1.0
    assert ckpt["reference"]["path"] == str(llama_dir) and Path(ckpt["reference"]["ir_path"]).is_relative_to(cache)
    assert str(llama_dir) in first.stdout  # the table names the checkpoint the user passed

    again = _eval(compressed, llama_dir, cache, tmp_path / "again.json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Using the float IR of" in again.stderr and "Exporting" not in again.stderr
    cached = json.loads((tmp_path / "again.json").read_text())["models"]
    for key in ("perplexity", "top1_agreement", "kl_divergence", "size_bytes", "ir_path"):
        assert cached["reference"][key] == ckpt["reference"][key], key


def test_eval_refuses_a_reference_that_is_neither_with_the_fix(compressed, tmp_path):
    (tmp_path / "empty").mkdir()
    for reference in (tmp_path / "missing", tmp_path / "empty"):
        done = _eval(compressed, reference, tmp_path / "cache", tmp_path / "x.json")
        assert done.returncode == 1
        assert "pass the float OpenVINO IR folder, or the Transformers checkpoint folder" in done.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_reference_ir_exports_once_then_reuses_then_follows_changes(llama_dir, tmp_path, monkeypatch, kind):
    import shutil

    import optimum_wc
    from optimum_wc.export import pipeline

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(llama_dir, checkpoint)
    cache = tmp_path / "cache"
    first = optimum_wc.reference_ir(KINDS[kind](checkpoint), cache_dir=KINDS[kind](cache))
    assert (first / "openvino_model.xml").is_file() and first.is_relative_to(cache)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "export_folder", no_export)
        assert optimum_wc.reference_ir(checkpoint, cache_dir=cache) == first
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 1e-5}))  # another model now
    second = optimum_wc.reference_ir(checkpoint, cache_dir=cache)
    assert second != first and (second / "openvino_model.xml").is_file()
    assert not first.exists() and sorted(p.name for p in second.parent.iterdir()) == [second.name]


def test_reference_ir_of_an_ir_folder_is_itself_and_bad_paths_say_what_to_pass(llama_ir, tmp_path):
    import optimum_wc

    assert optimum_wc.reference_ir(llama_ir.parent) == llama_ir.parent
    assert optimum_wc.reference_ir(str(llama_ir.parent)) == llama_ir.parent
    with pytest.raises(ExportError, match="not found; pass the float OpenVINO IR folder, or the Transformers"):
        optimum_wc.reference_ir(tmp_path / "missing")
    with pytest.raises(ExportError, match="holds neither openvino_model.xml nor config.json"):
        optimum_wc.reference_ir(tmp_path)


def test_evaluation_names_reference_ir_for_a_checkpoint(llama_dir):
    from optimum_wc import OptimumWCError, evaluation

    with pytest.raises(OptimumWCError, match=r"Transformers checkpoint: optimum_wc.reference_ir\(folder\)"):
        evaluation.compile_model(llama_dir)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_against_a_checkpoint_through_reference_ir(compressed, llama_dir, llama_ir, tokens, tmp_path, kind):
    """The Python equivalent of ``eval --reference MODEL_DIR``: the same figures as against the float IR."""
    import optimum_wc
    from optimum_wc import evaluation

    reference = optimum_wc.reference_ir(KINDS[kind](llama_dir), cache_dir=tmp_path)
    by_checkpoint = evaluation.evaluate(KINDS[kind](compressed), tokens, KINDS[kind](reference), window=128)
    by_ir = evaluation.evaluate(compressed, tokens, llama_ir.parent, window=128)
    assert (by_checkpoint.perplexity, by_checkpoint.top1_agreement, by_checkpoint.kl_divergence) == \
        (by_ir.perplexity, by_ir.top1_agreement, by_ir.kl_divergence)
