"""Export a Transformers causal LM to OpenVINO IR and compress it with our engine.

Pipeline: checkpoint -> optimum-intel's exporter (stateful KV-cache IR, float,
never NNCF) saved to a staging folder -> read back (memory-mapped) -> our
engine -> save -> move into place.  Only one float copy of the weights is
ever in memory, and the output folder appears only when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .config import WeightCompressionConfig
from .errors import ExportError

logger = logging.getLogger("optimum_wc")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
)
IR_XML = "openvino_model.xml"
CONFIG_FILE = "optimum_wc_config.json"


def check_model_source(model_id: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Fail early, with the fix, on a missing folder or a model that is not a causal LM."""
    path = Path(str(model_id))
    if not path.exists():
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
        looks_local = path.is_absolute() or str(model_id).startswith((".", "~")) or str(model_id).count("/") > 1
        if looks_local or offline:
            raise ExportError(
                f"model {str(model_id)!r} not found: no such folder"
                + (" (HF_HUB_OFFLINE is set, so the hub is not tried)" if offline else "")
                + "; pass the folder of a Transformers checkpoint (with config.json and weights)."
            )
        return  # a hub id: let the exporter download it
    if not (path / "config.json").is_file():
        raise ExportError(
            f"{path} has no config.json, so it is not a Transformers checkpoint; pass the folder written by "
            "save_pretrained() (config.json plus weights)."
        )
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ExportError(f"cannot read {path / 'config.json'}: {exc}. Check the file, or pass trust_remote_code=True for custom code.") from exc
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    else:
        causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal:
        raise ExportError(
            f"{path} is a {config.model_type!r} model ({', '.join(architectures) or 'no architectures listed'}), "
            "not a causal language model; optimum-wc exports text-generation models (e.g. Llama, Qwen2, GPT-2)."
        )


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system), removed on failure."""
    target = Path(target).resolve()
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as exc:
        raise ExportError(f"cannot write the output folder {target}: {exc.strerror or exc}; choose a writable location.") from exc
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(tmp: Path, target: Path) -> None:
    """Replace ``target`` by the complete folder ``tmp`` (renames only; the old one is removed last)."""
    target = Path(target).resolve()
    old = None
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"{target} exists and is not a folder; choose another output path.")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_float_ir(model_id: str | os.PathLike, output: Path, task: str | None = None, trust_remote_code: bool = False) -> None:
    """Run optimum-intel's exporter without any weight compression (float IR, stateful)."""
    from optimum.exporters.openvino import main_export
    from optimum.intel.openvino.configuration import OVConfig

    try:
        main_export(
            model_name_or_path=str(model_id),
            output=output,
            task=task or "text-generation-with-past",
            trust_remote_code=trust_remote_code,
            ov_config=OVConfig(dtype="auto"),  # a non-None config: no default NNCF INT8 for 1B+ models
            stateful=True,
        )
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises ValueError/KeyError/RuntimeError...
        raise ExportError(
            f"optimum-intel could not export {model_id}: {exc}. Check that its architecture is supported by "
            "optimum-intel's OpenVINO exporter (or pass trust_remote_code=True for custom code)."
        ) from exc
    if not (output / IR_XML).is_file():
        raise ExportError(f"the exporter wrote no {IR_XML} for {model_id}; the architecture is probably unsupported.")


def _calibration_tokenizer(config: WeightCompressionConfig, folder: Path):
    """The model's tokenizer when the config calibrates on data (text needs tokenising), else None."""
    if not config.data_aware_options:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def export_model(
    model_id: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: WeightCompressionConfig | dict | Any | None = None,
    *,
    task: str | None = None,
    trust_remote_code: bool = False,
    load: bool = True,
    progress: bool = False,
):
    """Export ``model_id`` to ``output_dir`` as OpenVINO IR compressed by our engine.

    ``config=None`` keeps the weights float.  Returns the loaded
    :class:`~optimum_wc.modeling.OVModelForCausalLM` (or None with ``load=False``).
    ``compression_report.json`` is written beside the model; ``progress``
    shows progress bars (steps and layers).
    """
    import openvino as ov

    from .engine import compress_model
    from .report import Stages, write_report

    wc_config = None if config is None else WeightCompressionConfig.coerce(config)
    check_model_source(model_id, trust_remote_code)
    target = Path(output_dir)
    with staging_dir(target) as tmp:
        float_dir, out_dir = tmp / "float", tmp / "out"
        stages = Stages(("export", "compress", "save"), progress)
        stages.start("export")
        start = time.perf_counter()
        from .prequantized import detect_prequantized, export_prequantized_ir

        prequantized = detect_prequantized(model_id)  # GPTQ/AWQ: keep the checkpoint's integer weights exactly
        if prequantized is not None:
            export_prequantized_ir(model_id, float_dir, prequantized, task, trust_remote_code)
        else:
            export_float_ir(model_id, float_dir, task, trust_remote_code)
        logger.info("Exported the float IR in %.1f s.", time.perf_counter() - start)
        out_dir.mkdir()
        core = ov.Core()
        model = core.read_model(float_dir / IR_XML)
        stages.start("compress")
        if wc_config is not None:
            compress_model(model, wc_config, progress=progress, tokenizer=_calibration_tokenizer(wc_config, float_dir))
        stages.start("save")
        ov.save_model(model, out_dir / IR_XML, compress_to_fp16=False)
        write_report(out_dir, model, model_id=model_id, timings=stages.close(), float_bin=float_dir / "openvino_model.bin")
        del model
        for item in sorted(float_dir.iterdir()):
            if item.name not in (IR_XML, "openvino_model.bin") and item.is_file():
                shutil.copy2(item, out_dir / item.name)
        if wc_config is not None:
            (out_dir / CONFIG_FILE).write_text(json.dumps(wc_config.to_dict(), indent=2, sort_keys=True))
        shutil.rmtree(float_dir)
        move_into_place(out_dir, target)
    if not load:
        return None
    from .modeling import OVModelForCausalLM

    return OVModelForCausalLM.from_pretrained(target)
