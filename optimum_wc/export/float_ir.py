"""A Transformers causal LM -> float OpenVINO IR, by optimum-intel's exporter (stateful KV cache, never NNCF)."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoints.integrity import check_checkpoint_files, check_pickled_weights
from ..errors import ExportError
from ..layout import IR_XML
from .exporters import check_exportable, model_type_of, verified_exporters
from .noise import exporter_quiet


def check_model_source(model_id: str | os.PathLike, trust_remote_code: bool = False, task: str | None = None,
                       allow_pickle: bool = False) -> None:
    """Fail early, with the fix, on a missing folder, a model that is not a causal LM, one optimum-intel cannot
    export, a damaged weight file, or weights only pickled (unless ``allow_pickle``, see
    :func:`~optimum_wc.checkpoints.integrity.check_pickled_weights`).

    The weight files are checked from their headers only
    (:func:`~optimum_wc.checkpoints.integrity.check_checkpoint_files`).
    """
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
    if not trust_remote_code or not getattr(config, "auto_map", None):  # custom code may bring its own exporter
        check_exportable(config.model_type, architectures, task)
    check_checkpoint_files(path)
    check_pickled_weights(path, allow_pickle)


def export_float_ir(model_id: str | os.PathLike, output: Path, task: str | None = None, trust_remote_code: bool = False,
                    *, expect_ir: bool = True) -> None:
    """Run optimum-intel's exporter without any weight compression (float IR, stateful).

    ``expect_ir=False``: the IR is not expected on disk (the caller captured it).
    """
    from optimum.exporters.openvino import main_export
    from optimum.intel.openvino.configuration import OVConfig

    try:
        with exporter_quiet(), verified_exporters(model_type_of(model_id, trust_remote_code), task):
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
    if expect_ir and not (output / IR_XML).is_file():
        raise ExportError(f"the exporter wrote no {IR_XML} for {model_id}; the architecture is probably unsupported.")
