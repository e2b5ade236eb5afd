"""Every entry point keeps a pre-quantized checkpoint's codes: our model class, optimum-intel's own class after
``import optimum_wc``, ``optimum-wc export`` and ``optimum-cli export openvino-wc`` (bitsandbytes NF4 and
compressed-tensors NVFP4 checkpoints made by the tools themselves, see ``tests/fixtures/``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BIN = Path(sys.executable).parent
# fixture -> (quant_method in the IR's record, element type of the codes, quantized linears)
CASES = {"bitsandbytes/nf4-double": ("bitsandbytes", "nf4", 14),
         "compressed_tensors/nvfp4-a16": ("compressed-tensors", "f4e2m1", 14)}


def _codes(model: ov.Model) -> Counter:
    return Counter(op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant")


def _check(model: ov.Model, case: str) -> None:
    from optimum_wc.ir.rt_info import read_prequantized_info

    method, code_type, n = CASES[case]
    assert _codes(model)[code_type] == n, _codes(model)
    record = read_prequantized_info(model)
    assert record["format"]["method"] == method and len(record["layers"]) == n


@pytest.mark.parametrize("case", list(CASES))
def test_model_classes_keep_the_codes(case):
    import torch
    from optimum.intel import OVModelForCausalLM as StockClass

    import optimum_wc

    ours = optimum_wc.OVModelForCausalLM.from_pretrained(FIXTURES / case, export=True, compile=False)
    _check(ours.model, case)
    stock = StockClass.from_pretrained(FIXTURES / case, export=True, compile=False)
    _check(stock.model, case)
    ids = torch.from_numpy(np.random.default_rng(0).integers(3, 500, size=(1, 8)))
    ours.compile()
    stock.compile()
    assert torch.equal(ours.generate(ids, max_new_tokens=4, do_sample=False),
                       stock.generate(ids, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("case", list(CASES))
def test_both_command_lines_keep_the_codes(case, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for argv, out in (([BIN / "optimum-wc", "export", FIXTURES / case], tmp_path / "wc"),
                      ([BIN / "optimum-cli", "export", "openvino-wc", "-m", FIXTURES / case], tmp_path / "cli")):
        done = subprocess.run([str(a) for a in [*argv, out]], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        _check(ov.Core().read_model(out / "openvino_model.xml"), case)
