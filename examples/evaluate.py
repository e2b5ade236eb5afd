"""Evaluate a compressed model against its float original: perplexity, top-1 agreement, KL, speed, one answer.

    python examples/evaluate.py [COMPRESSED_DIR] [--reference FLOAT_DIR] [--text FILE] [--tokens 4096]

COMPRESSED_DIR defaults to out/model-int4 (written by examples/export_int4.py).
Without --reference, the float original is exported once, beside it
(COMPRESSED_DIR-float), from the checkpoint named in its compression_report.json.
Without --text, a built-in excerpt of Pride and Prejudice is used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compressed", nargs="?", default="out/model-int4", help="compressed IR folder")
    parser.add_argument("--reference", help="float IR folder (default: exported from the original checkpoint)")
    parser.add_argument("--text", help="evaluation text file (default: built-in sample)")
    parser.add_argument("--tokens", type=int, default=4096, help="number of evaluation tokens")
    parser.add_argument("--window", type=int, default=512, help="window length (fresh KV cache per window)")
    parser.add_argument("--prompt", default="What is the capital of France?")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from optimum_wc import evaluation, export_model

    compressed = Path(args.compressed)
    reference = Path(args.reference) if args.reference else compressed.with_name(compressed.name + "-float")
    if not (reference / "openvino_model.xml").is_file():
        original = json.loads((compressed / "compression_report.json").read_text())["model"]
        print(f"Exporting the float original of {compressed} from {original} -> {reference}")
        export_model(original, reference, config=None, load=False)

    tokenizer = AutoTokenizer.from_pretrained(compressed)
    text = evaluation.load_text(args.text) if args.text else evaluation.sample_text()
    tokens = evaluation.tokenize_prefix(tokenizer, text, args.tokens)  # tokenise once, for both models

    float_model = evaluation.compile_model(reference)  # f32 activations: shows the weight error alone
    results = evaluation.evaluate_many(
        {"float": float_model, "compressed": evaluation.compile_model(compressed)}, tokens, float_model, window=args.window
    )
    prompt = evaluation.chat_prompt_ids(tokenizer, args.prompt)
    eos = evaluation.eos_ids(tokenizer, compressed)

    print(f"{len(tokens)} tokens, windows of {results['float'].window}")
    print(f"{'model':<11} {'size MiB':>9} {'perplexity':>11} {'top-1 %':>8} {'KL nats':>9} {'tokens/s':>9}  answer")
    for name, folder in (("float", reference), ("compressed", compressed)):
        r = results[name]
        gen = evaluation.greedy_generate(folder, prompt, max_new_tokens=32, eos_token_ids=eos)
        answer = " ".join(tokenizer.decode(gen.tokens, skip_special_tokens=True).split())
        print(
            f"{name:<11} {evaluation.ir_size(folder) / 2**20:9.1f} {r.perplexity:11.3f} {100 * r.top1_agreement:8.1f} "
            f"{r.kl_divergence:9.5f} {gen.tokens_per_s:9.1f}  {answer}"
        )


if __name__ == "__main__":
    main()
