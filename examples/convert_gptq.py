"""Convert a GPTQ (or AWQ) checkpoint folder to OpenVINO IR, keeping its INT4/INT8 weights exactly, then chat with it.

    python examples/convert_gptq.py GPTQ_DIR [OUT_DIR] [--int8-embeddings] [--prompt "..."]

No GPTQ library and no GPU: the packed tensors are read with NumPy.  With
--int8-embeddings the float weights left (embeddings, lm_head) are compressed
to INT8 by optimum-wc's engine; the GPTQ weights are never requantized.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="GPTQ/AWQ checkpoint folder (config.json with quantization_config, safetensors)")
    parser.add_argument("out", nargs="?", default="out/model-gptq", help="output folder (default: out/model-gptq)")
    parser.add_argument("--int8-embeddings", action="store_true", help="also compress embeddings and lm_head to INT8")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from transformers import AutoTokenizer, pipeline

    from optimum_wc import WeightCompressionConfig, export_model
    from optimum_wc.checkpoints.formats import detect_prequantized
    from optimum_wc.ir.rt_info import read_prequantized_info

    fmt = detect_prequantized(args.model)
    if fmt is None:
        parser.error(f"{args.model} is not a GPTQ/AWQ checkpoint; use examples/export_int4.py for float models")
    config = WeightCompressionConfig(mode="int8_asym") if args.int8_embeddings else None
    start = time.perf_counter()
    model = export_model(args.model, args.out, config)
    info = read_prequantized_info(model.model)
    modes = Counter(layer["mode"] for layer in info["layers"])
    print(f"Converted {args.model} -> {args.out} in {time.perf_counter() - start:.1f} s")
    print(f"kept exactly: {len(info['layers'])} {fmt.method.upper()} linear layers "
          f"({', '.join(f'{n} {m}' for m, n in sorted(modes.items()))}; {fmt.checkpoint_format}, {fmt.bits}-bit, "
          f"group size {fmt.group_size}{', act-order' if fmt.desc_act else ''})")
    size = (Path(args.out) / "openvino_model.bin").stat().st_size / 2**20
    print(f"openvino_model.bin: {size:.1f} MiB")

    tokenizer = AutoTokenizer.from_pretrained(args.out)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    messages = [{"role": "user", "content": args.prompt}]
    prompt = args.prompt
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = pipe(prompt, max_new_tokens=args.max_new_tokens, do_sample=False, return_full_text=False)
    answer = answer[0]["generated_text"]
    print(f"Q: {args.prompt}\nA: {answer.strip()}")


if __name__ == "__main__":
    main()
