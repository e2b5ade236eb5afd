"""Data-aware INT4 export: AWQ + scale estimation calibrated on local text.

    python examples/export_awq.py MODEL_DIR OUT_DIR --text calibration.txt [--samples 64]

The calibration text is cut into samples of 128 tokens; keep it apart from
the text you evaluate on.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="Transformers checkpoint folder")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--text", required=True, help="calibration text file (or folder of .txt files)")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (default 64)")
    parser.add_argument("--group-size", type=int, default=128)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from optimum_wc import WeightCompressionConfig, export_model

    config = WeightCompressionConfig(
        mode="int4_asym", group_size=args.group_size, awq=True, scale_estimation=True,
        dataset=str(Path(args.text)), subset_size=args.samples,
    )
    start = time.perf_counter()
    model = export_model(args.model, args.out, config)
    print(f"AWQ + scale estimation export of {args.model} -> {args.out} in {time.perf_counter() - start:.1f} s")
    report = Path(args.out) / "compression_report.json"
    print(f"report: {report} ({'written' if report.is_file() else 'missing'})")
    print("generation:", model.generate(**_prompt(args.out), max_new_tokens=8, do_sample=False).tolist())


def _prompt(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)("It is a truth universally acknowledged", return_tensors="pt")


if __name__ == "__main__":
    main()
