"""Command-line options shared by ``optimum-wc`` and ``optimum-cli export openvino-wc``.

The weight-compression flags mirror ``optimum-cli export openvino`` so that a
command line switches from NNCF to our engine by changing one word
(``openvino`` -> ``openvino-wc``).  Nothing heavy is imported here: building
the parser and validating the config (:func:`config_from_args`) must stay
fast, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import (
    WEIGHT_FORMAT_MODES,
    BackupMode,
    CompressWeightsMode,
    GroupSizeFallback,
    SensitivityMetric,
    WeightCompressionConfig,
    mode_of_weight_format,
)
from ..errors import ExportError, OptimumWCError

# --weight-format spellings: optimum-cli's, one short name per NNCF mode, and fp32 (no compression).
WEIGHT_FORMATS = {"fp32": None, **WEIGHT_FORMAT_MODES}
TEXT_GENERATION_TASKS = ("text-generation-with-past", "text-generation")


class UsageError(OptimumWCError):
    """Flags that contradict each other or name something impossible (exit code 2)."""


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` / ``--quiet`` (accepted after the subcommand)."""
    group = parser.add_argument_group("Output")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show progress messages and, on failure, the full traceback")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="print only the final summary and errors (no progress bars)")


def add_compression_options(parser: argparse.ArgumentParser) -> None:
    """The weight-compression flags of ``optimum-cli export openvino``, plus ``--mode`` and ``--ignored-scope``."""
    g = parser.add_argument_group("Weight compression (the flags of `optimum-cli export openvino`)")
    g.add_argument("--weight-format", choices=list(WEIGHT_FORMATS), default=None, type=str.lower,
                   help="int8 (default, as optimum-cli for models over 1B parameters), int4, int3, int2, nf4, fp4, "
                        "fp8 (f8e4m3), mxfp4, mxfp8, nvfp4, cb4, codebook (with --codebook) or adaptive_codebook; "
                        "fp32 keeps the weights float")
    g.add_argument("--mode", choices=[m.value for m in CompressWeightsMode], default=None, type=str.lower,
                   help="the exact mode, instead of --weight-format and --sym")
    g.add_argument("--sym", action="store_true", default=None,
                   help="symmetric int8/int4 quantization of the primary precision (default asymmetric)")
    g.add_argument("--codebook", type=Path, default=None, metavar="FILE",
                   help="the look-up table of --weight-format codebook: a file of sorted numbers (JSON list, .npy, "
                        "or text separated by spaces, commas or new lines)")
    g.add_argument("--group-size", type=int, default=None,
                   help="group size (default: 128 for int4/int3/int2/nf4/fp4/fp8, 32 for mxfp4/mxfp8, 16 for "
                        "nvfp4, per channel for int8 and codebooks); -1 for one scale per output channel")
    g.add_argument("--group-size-fallback", choices=[f.value for f in GroupSizeFallback], default=None,
                   help="layers the group size does not divide: adjust (default: the largest power-of-two divisor "
                        ">= 32, else backup precision), ignore (backup precision) or error")
    g.add_argument("--ratio", type=float, default=None,
                   help="share of the weights in 4 bits, the rest in --backup-precision (default 1.0)")
    g.add_argument("--backup-precision", choices=[b.value for b in BackupMode], default=None,
                   help="precision of the weights outside the primary format (default int8_asym; mxfp8_e4m3 for "
                        "mxfp4/mxfp8, fp8_e4m3 for fp4/fp8; none keeps them float)")
    g.add_argument("--all-layers", action="store_true", default=None,
                   help="also put the embeddings and the last MatMul (lm_head) in 4 bits")
    g.add_argument("--sensitivity-metric", choices=[m.value for m in SensitivityMetric], default=None, type=str.lower,
                   help="how layers are ranked for --ratio < 1 (default weight_quantization_error; the others need --dataset)")
    g.add_argument("--dataset", default=None,
                   help="calibration data for the data-aware options: a local text file or folder of .txt files, "
                        "'auto' (text the model generates itself), or a dataset name such as wikitext2")
    g.add_argument("--num-samples", type=int, default=None, help="number of calibration samples (default 128)")
    g.add_argument("--awq", action="store_true", default=None, help="activation-aware weight quantization (needs --dataset)")
    g.add_argument("--scale-estimation", action="store_true", default=None, help="scale estimation (needs --dataset)")
    g.add_argument("--gptq", action="store_true", default=None, help="GPTQ (needs --dataset)")
    g.add_argument("--gptq-act-order", action="store_true", default=None,
                   help="GPTQ quantizes the most activated input channels first (static groups; not in NNCF)")
    g.add_argument("--gptq-asymmetric", action="store_true", default=None,
                   help="GPTAQ: each layer aims at the float model's output, not at its own on the compressed "
                        "model's inputs (runs the float model beside; not in NNCF)")
    g.add_argument("--mse-clipping", action="store_true", default=None,
                   help="data-free: each group's clipped range with the smallest weight error (2-4 bit integer "
                        "modes; not in NNCF)")
    g.add_argument("--full-range", action="store_true", default=None,
                   help="data-free: the smallest asymmetric step whose grid covers each group's whole range, no "
                        "weight clipped (int4 asym; not in NNCF)")
    g.add_argument("--mse-grid", action="store_true", default=None,
                   help="data-free: each group's step and zero point with the smallest weight error among grids that "
                        "keep its extreme weights as round to nearest does (2-4 bit integer modes; not in NNCF)")
    g.add_argument("--gptq-refine-rounds", type=int, default=None, metavar="N",
                   help="after GPTQ, N rounds of code and scale refinement on its layer objective (not in NNCF)")
    g.add_argument("--lora-correction", action="store_true", default=None, help="LoRA correction (needs --dataset)")
    g.add_argument("--lora-rank", type=int, default=None, help="rank of the LoRA correction adapters (default 8)")
    g.add_argument("--sample-length", type=int, default=None, help="tokens per calibration sample (default 128)")
    g.add_argument("--ignored-scope", action="append", default=None, metavar="SPEC",
                   help="keep layers out of compression (repeatable): NAME, name:NAME, pattern:REGEX, type:MatMul|Gather, "
                        "or a JSON object {\"names\": [...], \"patterns\": [...], \"types\": [...]}")


def add_export_options(parser: argparse.ArgumentParser, *, optimum_cli: bool = False) -> None:
    """Model, output folder, task and compression flags of an export.

    ``optimum_cli=True``: exactly optimum-cli's form (``-m/--model`` required,
    output positional); otherwise ``MODEL OUT`` positionally, or ``-m MODEL OUT``.
    """
    g = parser.add_argument_group("Model")
    if optimum_cli:
        g.add_argument("-m", "--model", required=True, help="a Transformers checkpoint folder (or a model id of the hub)")
    else:
        g.add_argument("model_pos", nargs="?", metavar="MODEL", help="a Transformers checkpoint folder (or a model id of the hub)")
        g.add_argument("-m", "--model", default=None, help="the model, as in optimum-cli (instead of MODEL)")
    g.add_argument("output", type=Path, metavar="OUTPUT" if optimum_cli else "OUT",
                   help="output folder (replaced only once the new model is complete)")
    g.add_argument("--task", default="auto",
                   help="text-generation-with-past (default: inferred, also for a local folder) or text-generation")
    add_source_trust_options(g)
    g.add_argument("--mxfp4-experts", choices=["i8", "f4e2m1"], default=None, type=str.lower,
                   help="gpt-oss MXFP4 experts in the IR, both exact: i8 (default; OpenVINO 2026.4 runs them "
                        "compressed) or f4e2m1 (as stored, half the size; OpenVINO 2026.4 decompresses them)")
    add_compression_options(parser)
    add_output_options(parser)


def add_source_trust_options(group) -> None:
    """What of a stranger's checkpoint may run as code: both off unless asked for."""
    group.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's custom modelling code")
    add_allow_pickle_option(group)


def add_allow_pickle_option(group) -> None:
    group.add_argument("--allow-pickle", action="store_true",
                       help="read a checkpoint whose weights are only pickled (pytorch_model.bin), with "
                            "torch.load(weights_only=True); refused by default, as opening a pickle can run code")


def export_model_arg(args: argparse.Namespace) -> str:
    """The model given positionally or with ``-m``/``--model`` (exactly one of them)."""
    positional = getattr(args, "model_pos", None)
    flag = getattr(args, "model", None)
    if positional and flag:
        raise UsageError(f"the model is given twice ({positional!r} and --model {flag!r}); give it once.")
    if not (positional or flag):
        raise UsageError("no model given; pass MODEL OUT (a Transformers checkpoint folder and an output folder).")
    return positional or flag


def parse_ignored_scope(specs: list[str] | None) -> dict[str, list[str]] | None:
    """``--ignored-scope`` values -> ``{"names": [...], "patterns": [...], "types": [...]}``."""
    if not specs:
        return None
    scope: dict[str, list[str]] = {"names": [], "patterns": [], "types": []}
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("{"):
            try:
                value = json.loads(spec)
            except ValueError as exc:
                raise UsageError(f"--ignored-scope {spec!r} is not valid JSON: {exc}.") from exc
            if not isinstance(value, dict):
                raise UsageError(f"--ignored-scope {spec!r} must be a JSON object with 'names', 'patterns' or 'types'.")
            unknown = sorted(set(value) - set(scope))
            if unknown:
                raise UsageError(f"--ignored-scope has unknown keys {unknown}; use 'names', 'patterns' and 'types'.")
            for key, items in value.items():
                items = [items] if isinstance(items, str) else items
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    raise UsageError(f"--ignored-scope {spec!r}: {key} must be a string or a list of strings, "
                                     f'e.g. {{"{key}": ["..."]}}.')
                scope[key].extend(items)
            continue
        kind, sep, rest = spec.partition(":")
        key = {"name": "names", "pattern": "patterns", "type": "types"}.get(kind.lower()) if sep else None
        if key is None:
            scope["names"].append(spec)
        elif not rest:
            raise UsageError(f"--ignored-scope {spec!r} is empty after '{kind}:'; e.g. pattern:.*mlp.*")
        else:
            scope[key].append(rest)
    return scope


_COMPRESSION_FLAGS = {
    "sym": "--sym", "codebook": "--codebook", "group_size": "--group-size", "group_size_fallback": "--group-size-fallback", "ratio": "--ratio",
    "backup_precision": "--backup-precision", "all_layers": "--all-layers", "sensitivity_metric": "--sensitivity-metric",
    "dataset": "--dataset", "num_samples": "--num-samples", "awq": "--awq", "scale_estimation": "--scale-estimation",
    "gptq": "--gptq", "gptq_act_order": "--gptq-act-order", "gptq_asymmetric": "--gptq-asymmetric",
    "gptq_refine_rounds": "--gptq-refine-rounds", "mse_clipping": "--mse-clipping", "full_range": "--full-range", "mse_grid": "--mse-grid",
    "lora_correction": "--lora-correction", "lora_rank": "--lora-rank",
    "sample_length": "--sample-length", "ignored_scope": "--ignored-scope",
}


def config_from_args(args: argparse.Namespace) -> WeightCompressionConfig | None:
    """The validated config of the flags (None for ``--weight-format fp32``).

    Raises :class:`UsageError` for contradicting flags and
    :class:`~optimum_wc.ConfigError` for values the config rejects (both exit 2).
    """
    given = [flag for name, flag in _COMPRESSION_FLAGS.items() if getattr(args, name, None) is not None]
    fmt, mode = args.weight_format, args.mode
    if fmt == "fp32":
        if mode is not None or given:
            extra = ", ".join(([f"--mode {mode}"] if mode else []) + given)
            raise UsageError(f"--weight-format fp32 keeps the weights float, so {extra} cannot apply; drop them or choose int8/int4.")
        return None
    mode = _mode_of(fmt, mode, bool(args.sym))
    kwargs: dict[str, Any] = {"mode": mode}
    if getattr(args, "codebook", None) is not None:
        kwargs["codebook"] = read_codebook(args.codebook)
    for name, key in (("group_size", "group_size"), ("ratio", "ratio"), ("backup_precision", "backup_mode"),
                      ("all_layers", "all_layers"), ("sensitivity_metric", "sensitivity_metric"),
                      ("group_size_fallback", "group_size_fallback"), ("awq", "awq"),
                      ("scale_estimation", "scale_estimation"), ("gptq", "gptq"), ("gptq_act_order", "gptq_act_order"),
                      ("gptq_asymmetric", "gptq_asymmetric"), ("gptq_refine_rounds", "gptq_refine_rounds"), ("mse_clipping", "mse_clipping"),
                      ("full_range", "full_range"), ("mse_grid", "mse_grid"),
                      ("lora_correction", "lora_correction"),
                      ("num_samples", "subset_size"), ("dataset", "dataset"), ("lora_rank", "lora_rank"),
                      ("sample_length", "sample_length")):
        value = getattr(args, name, None)
        if value is not None:
            kwargs[key] = value
    dataset = kwargs.get("dataset")
    if isinstance(dataset, str) and _looks_like_path(dataset) and not Path(dataset).exists():
        raise OptimumWCError(f"--dataset {dataset}: no such file or folder; pass a text file, a folder of .txt files, "
                             "'auto' (text the model generates) or a dataset name.")
    scope = parse_ignored_scope(getattr(args, "ignored_scope", None))
    if scope is not None:
        kwargs["ignored_scope"] = scope
    return WeightCompressionConfig(**kwargs)


def _mode_of(fmt: str | None, mode: str | None, sym: bool) -> str:
    """The mode of ``--weight-format`` / ``--mode`` / ``--sym`` (default int8_asym), or a UsageError."""
    if mode is not None:
        implied = WEIGHT_FORMATS.get(fmt) if fmt else None
        if fmt is not None and not mode.startswith(implied):
            raise UsageError(f"--mode {mode} contradicts --weight-format {fmt}; give only one of them.")
        if sym and mode.endswith("_asym"):
            raise UsageError(f"--sym contradicts --mode {mode}; use --mode {mode.replace('_asym', '_sym')}.")
        if sym and not mode.startswith("int"):
            raise UsageError(f"--sym applies to integer formats, not --mode {mode}; drop --sym.")
        return mode
    if sym and not WEIGHT_FORMATS[fmt or "int8"].startswith("int"):
        raise UsageError(f"--sym applies to integer formats, not --weight-format {fmt}; drop --sym.")
    return mode_of_weight_format(fmt or "int8", sym).value


def read_codebook(path: Path) -> list[float]:
    """The numbers of a codebook file: a JSON list, a NumPy .npy array, or text separated by spaces/commas/new lines."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--codebook {path}: no such file; give a file of sorted numbers, e.g. a JSON list.")
    try:
        if path.suffix == ".npy":
            import numpy as np

            return [float(v) for v in np.load(path, allow_pickle=False).reshape(-1)]
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith("["):
            return [float(v) for v in json.loads(text)]
        return [float(v) for v in text.replace(",", " ").split()]
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"--codebook {path} is not a list of numbers ({exc}); write e.g. [-1, -0.5, 0, 0.5, 1].") from exc


def _looks_like_path(value: str) -> bool:
    """A local path rather than a dataset name such as ``wikitext2`` or ``allenai/c4``."""
    return value.startswith(("/", "~", ".")) or value.lower().endswith((".txt", ".json", ".jsonl", ".csv", ".parquet"))


def resolve_task(task: str | None, model: str) -> str:
    """The export task: ``auto`` is inferred (for a local folder too, unlike optimum-cli).

    optimum-wc exports causal language models, so a checkpoint whose
    config names a causal-LM architecture gets ``text-generation-with-past``
    (anything else is refused with its model type by the export itself).
    """
    if task in (None, "", "auto"):
        return "text-generation-with-past"
    if task not in TEXT_GENERATION_TASKS:
        raise UsageError(
            f"--task {task} is not supported: optimum-wc exports text-generation models; "
            "use --task text-generation-with-past (the default, inferred) or text-generation."
        )
    return task


def check_output_dir(output: Path) -> None:
    """Refuse an output path that cannot be a folder (an existing file, or a path under a file), before any work."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ExportError(f"the output {output} exists and is not a folder; choose another output folder.")
    for parent in output.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"cannot write the output folder {output}: {parent} is a file, not a folder; "
                                     "choose a writable location.")
            break

