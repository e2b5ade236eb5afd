"""Peak memory of exporting a GPTQ checkpoint (issue 6), beside exporting the same model in float.

``python -m benchmarks.prequantized_memory [--hidden 1024 --intermediate 2816 --layers 16]``

Builds a random float16 Llama, writes a GPTQ (4-bit, group 128) checkpoint of
it with the test suite's writer (``tests/gptq_writer.py``: packed planted
codes, no GPTQ library), then runs each export in a fresh process and reads
its peak resident memory (VmHWM):

* ``float``: optimum-intel's export of the float16 checkpoint (our float path);
* ``gptq``: :func:`optimum_wc.export.prequantized.export_prequantized_ir` with ``stream=False`` (a staged
  copy of the float parts exported with placeholder weights for the quantized layers, their integers put
  in afterwards); ``gptq-streamed``: the same IR with the float parts bound to the checkpoint (no staging);
* ``gptq-dequantized``: the former path, the quantized layers dequantized to float16 for the exporter;
* ``gptq-int8-staged`` / ``gptq-int8-streamed``: the whole export with INT8 for the float parts, through a
  staged float checkpoint and float IR, or streamed (float parts bound to the checkpoint, the integer
  layers converted while the ``.bin`` is written); both write the same bytes.

Prints one line per export and a JSON summary; figures are for the README/issue notes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RUN = {
    "float": "from optimum_wc.export.float_ir import export_float_ir; export_float_ir(SRC, OUT)",
    "gptq": "from optimum_wc.export.prequantized import export_prequantized_ir as e; e(SRC, OUT, stream=False)",
    "gptq-streamed": "from optimum_wc.export.prequantized import export_prequantized_ir as e; e(SRC, OUT)",
    "gptq-dequantized": textwrap.dedent("""
        import openvino as ov
        from optimum_wc.checkpoints.reader import PrequantizedCheckpoint
        from optimum_wc.checkpoints.staging import stage_float_checkpoint
        from optimum_wc.export.float_ir import export_float_ir
        from optimum_wc.export.prequantized import apply_prequantized
        ckpt = PrequantizedCheckpoint(SRC)
        stage_float_checkpoint(ckpt, OUT / "staged", dequantized_layers=True)
        export_float_ir(OUT / "staged", OUT / "float")
        model = ov.Core().read_model(OUT / "float" / "openvino_model.xml")
        apply_prequantized(model, ckpt)
        ov.save_model(model, OUT / "openvino_model.xml", compress_to_fp16=False)
    """),
    # the whole export with a data-free config (INT8 for the float parts), staged as before ...
    "gptq-int8-staged": textwrap.dedent("""
        import openvino as ov
        from optimum_wc import WeightCompressionConfig
        from optimum_wc.export.pipeline import compress_and_save
        from optimum_wc.export.prequantized import export_prequantized_ir
        from optimum_wc.report import Stages
        export_prequantized_ir(SRC, OUT / "float", stream=False)
        model = ov.Core().read_model(OUT / "float" / "openvino_model.xml")
        compress_and_save(model, OUT, WeightCompressionConfig(mode="int8_asym"), Stages(("export", "compress", "save")),
                          float_source=OUT / "float" / "openvino_model.bin")
    """),
    # ... and streamed: float parts bound to the checkpoint, integer layers made while the .bin is written
    "gptq-int8-streamed": textwrap.dedent("""
        from optimum_wc import WeightCompressionConfig
        from optimum_wc.export.pipeline import export_into
        export_into(SRC, OUT / "out", WeightCompressionConfig(mode="int8_asym"), OUT / "work")
    """),
}


def _peak_mib(kind: str, src: Path, out: Path) -> float:
    code = "\n".join([
        "import os, sys; from pathlib import Path",
        f"SRC, OUT = Path({str(src)!r}), Path({str(out)!r})",
        _RUN[kind],
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]",
        "print('PEAK_KIB', hwm)",
    ])
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [l for l in done.stdout.splitlines() if l.startswith("PEAK_KIB")]
    if done.returncode or not lines:
        raise RuntimeError(f"{kind} export failed:\n{done.stderr[-3000:]}")
    return int(lines[0].split()[1]) / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--layers", type=int, default=16)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from gptq_writer import write_checkpoint
    from transformers import AutoModelForCausalLM

    from optimum_wc.models import build_tiny_llama

    text = (ROOT / "tests" / "data" / "emma_excerpt.txt").read_text()
    with tempfile.TemporaryDirectory(prefix="wc-mem-") as tmp:
        tmp = Path(tmp)
        build_tiny_llama(tmp / "f32", text, hidden=args.hidden, intermediate=args.intermediate, layers=args.layers)
        model = AutoModelForCausalLM.from_pretrained(tmp / "f32", dtype=torch.float16)
        model.save_pretrained(tmp / "float")
        n_params = sum(p.numel() for p in model.parameters())
        del model
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tmp / "f32" / name).is_file():
                (tmp / "float" / name).write_bytes((tmp / "f32" / name).read_bytes())
        write_checkpoint(tmp / "float", tmp / "gptq", group_size=128, dtype="float16")
        sizes = {k: sum(f.stat().st_size for f in (tmp / k).glob("*.safetensors")) / 2**20 for k in ("float", "gptq")}
        result = {"parameters": n_params, "checkpoint_mib": sizes}
        for kind in ("float", "gptq", "gptq-streamed", "gptq-dequantized", "gptq-int8-staged", "gptq-int8-streamed"):
            out = tmp / f"out-{kind}"
            out.mkdir()
            result[kind] = round(_peak_mib(kind, tmp / ("float" if kind == "float" else "gptq"), out), 1)
            print(f"{kind}: peak RSS {result[kind]} MiB", flush=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
