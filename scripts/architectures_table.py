"""Print the README's "Architectures" table: what optimum-wc compresses in each architecture, read from the IR.

For every architecture of :data:`optimum_wc.models.TINY_ARCHITECTURES` (tiny random models: hidden 64,
2 layers, vocabulary 512, built offline), export it, compress it with INT4_ASYM (group 128, ratio 1.0:
every ratio-defining layer in INT4, embeddings and lm_head in the INT8 backup) and count, from the IR's
constants (:mod:`optimum_wc.ir.inventory`), the share of the model's parameters (transformers' count)
stored in each precision.  What is neither is float: norms, biases, rotary buffers.

    python scripts/architectures_table.py [WORK_DIR] [--arch llama --arch qwen3_moe ...]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import optimum_wc  # noqa: F401 - the hook and the config
from optimum_wc import WeightCompressionConfig, export_model
from optimum_wc.export.pipeline import compress_ir_folder
from optimum_wc.ir.inventory import parameters_by_type, stored_weights
from optimum_wc.ir.rt_info import read_rt_info
from optimum_wc.models import TINY_ARCHITECTURES, build_tiny_model, train_bpe_tokenizer

TEXT = Path(__file__).resolve().parent.parent / "tests" / "data" / "emma_excerpt.txt"
CONFIG = WeightCompressionConfig(mode="int4_asym", group_size=128, ratio=1.0)


def _kind(record: dict) -> str:
    """What a compressed weight is, from the engine's layer record."""
    if record["kind"] == "embedding":
        return "embedding + tied lm_head" if any("MatMul" in op for op in record["ops"]) else "embedding"
    return "expert" if len(record["shape"]) == 3 else "linear"


def row(arch: str, work: Path, tokenizer) -> str:
    """One markdown row: architecture, transformers class, parameters, shares per precision, weights found."""
    import openvino as ov
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = build_tiny_model(arch, work / arch / "model", tokenizer=tokenizer)
    config = AutoConfig.from_pretrained(ckpt)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(ckpt).parameters())
    export_model(ckpt, work / arch / "float", None, load=False)
    compress_ir_folder(work / arch / "float", work / arch / "int4", CONFIG)
    model = ov.Core().read_model(work / arch / "int4" / "openvino_model.xml")
    by_type = parameters_by_type(stored_weights(model))
    int4, int8 = by_type.get("u4", 0) + by_type.get("i4", 0), by_type.get("u8", 0) + by_type.get("i8", 0)
    found = ", ".join(f"{n} {k}" for k, n in sorted(Counter(_kind(r) for r in read_rt_info(model)[1]).items()))
    share = lambda n: f"{100 * n / params:.1f} %"  # noqa: E731
    return (f"| {arch} | {config.architectures[0]} | {params:,} | {share(int4)} | {share(int8)} | "
            f"{share(params - int4 - int8)} | {found} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", help="folder for the models (default: a temporary one)")
    parser.add_argument("--arch", action="append", choices=sorted(TINY_ARCHITECTURES))
    args = parser.parse_args()
    tokenizer = train_bpe_tokenizer(TEXT.read_text(encoding="utf-8")[:100_000], 512)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        print("| architecture | transformers class | parameters | INT4 | INT8 | float | weights compressed |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for arch in args.arch or sorted(TINY_ARCHITECTURES):
            print(row(arch, work, tokenizer), flush=True)


if __name__ == "__main__":
    main()
