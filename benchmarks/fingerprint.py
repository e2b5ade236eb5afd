"""Fingerprints of the exported IRs: proof that a change which should not alter output did not.

    python -m benchmarks.fingerprint [--work DIR] [--configs NAMES] [--out FILE]

Exports SmolLM2-135M-Instruct with every benchmark config (data-free and
data-aware, :mod:`benchmarks.configs`) through ``optimum_wc.export_model``,
and tiny GPTQ / AWQ checkpoints (planted integer weights, written by
``tests/gptq_writer.py``) with and without INT8 compression of their float
parts, then prints one line per export::

    NAME  sha256(openvino_model.xml)  sha256(openvino_model.bin)  sha256(xml without schema-version lines)

The last column drops the lines that record the rt_info / config schema
version (``<schema_version value="..." />``), the one XML change a schema bump
makes on purpose; everything else must match byte for byte.  Data-aware
configs calibrate on the chapters of *Pride and Prejudice* shipped in
``optimum_wc/data``, copied into ``--work`` (the dataset path is recorded in
the IR's rt_info, so runs to compare must use the same ``--work``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from .configs import CONFIGS, select_configs

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_TEXT = ROOT / "optimum_wc" / "data" / "pride_and_prejudice_ch1-4.txt"
SCHEMA_LINE = re.compile(rb"^[ \t]*<schema_version value=\"[^\"]*\" />\r?\n", re.MULTILINE)
PREQUANTIZED = (
    # name, writer kwargs, optimum-wc config of the float parts (None: kept float)
    ("gptq_4bit_g32_act_order", {"method": "gptq", "bits": 4, "group_size": 32, "desc_act": True}, None),
    ("gptq_4bit_sym_g32_int8_rest", {"method": "gptq", "bits": 4, "group_size": 32, "sym": True}, "int8_asym"),
    ("gptq_8bit_per_channel", {"method": "gptq", "bits": 8, "group_size": -1, "checkpoint_format": "gptq_v2"}, None),
    ("awq_4bit_g32", {"method": "awq", "bits": 4, "group_size": 32}, None),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(ir_dir: Path) -> tuple[str, str, str]:
    """sha256 of the XML, of the .bin, and of the XML without schema-version lines."""
    xml = (ir_dir / "openvino_model.xml").read_bytes()
    return sha256(xml), sha256((ir_dir / "openvino_model.bin").read_bytes()), sha256(SCHEMA_LINE.sub(b"", xml))


def smollm2_rows(work: Path, names: list[str]) -> list[tuple[str, tuple[str, str, str]]]:
    from optimum_wc import export_model
    from optimum_wc.models import prepare_smollm2

    checkpoint = prepare_smollm2(work / "smollm2")
    calibration = work / "calibration.txt"
    shutil.copyfile(CALIBRATION_TEXT, calibration)
    rows = []
    for config in select_configs(",".join(names)):
        out = work / "out" / config.name
        start = time.perf_counter()
        export_model(checkpoint, out, config.ours(str(calibration)), load=False)
        rows.append((config.name, file_hashes(out)))
        print(f"# {config.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        shutil.rmtree(out)
    return rows


def prequantized_rows(work: Path) -> list[tuple[str, tuple[str, str, str]]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from gptq_writer import write_checkpoint  # noqa: E402 - a test helper, importable from tests/

    from optimum_wc import WeightCompressionConfig, export_model
    from optimum_wc.models import build_tiny_llama

    float_dir = work / "tiny-llama"
    if not (float_dir / "config.json").is_file():
        build_tiny_llama(float_dir, CALIBRATION_TEXT.read_text(encoding="utf-8"), hidden=64, intermediate=192)
    rows = []
    for name, kwargs, mode in PREQUANTIZED:
        ckpt, out = work / "ckpt" / name, work / "out" / name
        shutil.rmtree(ckpt, ignore_errors=True)
        write_checkpoint(float_dir, ckpt, seed=7, **kwargs)
        export_model(ckpt, out, None if mode is None else WeightCompressionConfig(mode=mode), load=False)
        rows.append((name, file_hashes(out)))
        shutil.rmtree(out)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fingerprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "fingerprint",
                        help="working folder; give the same one to runs whose lines are compared")
    parser.add_argument("--configs", help=f"comma-separated benchmark configs (default: all of {', '.join(CONFIGS)})")
    parser.add_argument("--no-prequantized", action="store_true", help="skip the GPTQ/AWQ checkpoints")
    parser.add_argument("--out", type=Path, help="also write the lines to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    names = [c.name for c in select_configs(args.configs)] if args.configs else list(CONFIGS)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = smollm2_rows(args.work, names)
    if not args.no_prequantized:
        rows += prequantized_rows(args.work)
    lines = [f"{name:34s} {xml} {bin_} {xml_wo_schema}" for name, (xml, bin_, xml_wo_schema) in rows]
    text = "\n".join(["# name  sha256(xml)  sha256(bin)  sha256(xml without schema-version lines)", *lines]) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
