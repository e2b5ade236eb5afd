"""Calibration tokens the float model writes itself, for both engines alike (``benchmarks.run --calib-text auto``).

Objective: measure what a user without calibration data gets. optimum-wc's
``dataset="auto"`` samples text from the float model (top-k 20 from fixed seed
prompts, :func:`optimum_wc.calibration.samples.prepare_samples`); here the
same generator runs once, its samples are saved as the run's calibration
token file, and NNCF and optimum-wc are given exactly those samples, one per
``CALIB_SEQ_LEN`` chunk. The generation's seconds are reported beside the
rows (they are not in either engine's compression time).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def write_self_generated_tokens(float_ir: Path, run_dir: Path, n_samples: int, sample_length: int,
                                seed: int = 0) -> tuple[Path, float]:
    """Write ``n_samples`` samples of ``sample_length`` tokens that the float IR generated; (file, seconds)."""
    import openvino as ov
    from transformers import AutoTokenizer

    from optimum_wc.calibration.samples import prepare_samples

    start = time.perf_counter()
    model = ov.Core().read_model(Path(float_ir) / "openvino_model.xml")
    tokenizer = AutoTokenizer.from_pretrained(float_ir)
    samples = prepare_samples("auto", tokenizer, n_samples, sample_length, ov_model=model, seed=seed)
    if any(len(s) != sample_length for s in samples):
        raise ValueError(f"the generated samples are not all {sample_length} tokens long")
    out = Path(run_dir) / "calib_tokens.npy"
    np.save(out, np.concatenate(samples).astype(np.int64))
    return out, time.perf_counter() - start
