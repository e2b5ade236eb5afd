"""``OVModelForCausalLM``: optimum-intel's class, with our engine and safe saving.

``from_pretrained(model, export=True, quantization_config=WeightCompressionConfig(...))``
exports with optimum-intel (stateful KV-cache IR, no NNCF) and compresses with
our engine; ``from_pretrained(saved_dir)`` reloads without recompressing.
``save_pretrained`` writes into a temporary folder and moves it into place,
with the tokenizer files and our compression config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from optimum.intel import OVModelForCausalLM as _OVModelForCausalLM

from . import integration
from .config import WeightCompressionConfig
from .errors import ExportError
from .export import TOKENIZER_FILES, check_model_source, move_into_place, staging_dir

integration.install()

__all__ = ["OVModelForCausalLM"]


class OVModelForCausalLM(_OVModelForCausalLM):
    """optimum-intel's ``OVModelForCausalLM``, compressing with optimum-wc's engine."""

    @classmethod
    def from_pretrained(cls, model_id, *args, export: bool = False, quantization_config=None, **kwargs):
        if export:
            check_model_source(model_id, trust_remote_code=kwargs.get("trust_remote_code", False))
        elif Path(str(model_id)).exists() and not (Path(str(model_id)) / "openvino_model.xml").is_file():
            raise ExportError(
                f"{model_id} holds no openvino_model.xml; to convert a Transformers checkpoint pass export=True."
            )
        if quantization_config is not None and not isinstance(quantization_config, WeightCompressionConfig):
            quantization_config = WeightCompressionConfig.coerce(quantization_config)
        if export:
            from .prequantized import detect_prequantized

            # GPTQ/AWQ: keep the integer weights (optimum-intel's own path needs gptqmodel and patches torch)
            if detect_prequantized(model_id) is not None:
                return cls._from_prequantized(model_id, *args, quantization_config=quantization_config, **kwargs)
        return super().from_pretrained(model_id, *args, export=export, quantization_config=quantization_config, **kwargs)

    @classmethod
    def _from_prequantized(cls, model_id, *args, quantization_config=None, **kwargs):
        """Export a GPTQ/AWQ checkpoint keeping its integer weights exactly (no gptqmodel), then load that IR."""
        from tempfile import TemporaryDirectory

        from .prequantized import export_prequantized_ir

        tmp = TemporaryDirectory(prefix="optimum-wc-prequantized-")
        try:
            export_prequantized_ir(model_id, Path(tmp.name), task=kwargs.pop("task", None),
                                   trust_remote_code=kwargs.get("trust_remote_code", False))
            model = super().from_pretrained(
                tmp.name, *args, export=False, quantization_config=quantization_config, **kwargs
            )
        except BaseException:
            tmp.cleanup()
            raise
        model._optimum_wc_tmpdir = tmp  # the IR folder (model_save_dir) lives as long as the model
        return model

    @property
    def wc_config(self) -> WeightCompressionConfig | None:
        """The compression config this model was made with, if optimum-wc made it."""
        return getattr(self, "_wc_config", None)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save IR, configs and tokenizer files; the folder appears only once complete."""
        target = Path(save_directory)
        with staging_dir(target) as tmp:
            super().save_pretrained(tmp, *args, **kwargs)
            source = Path(self.model_save_dir) if getattr(self, "model_save_dir", None) else None
            if source is not None and source.is_dir():
                for name in TOKENIZER_FILES:
                    if (source / name).is_file() and not (tmp / name).exists():
                        shutil.copy2(source / name, tmp / name)
            move_into_place(tmp, target)
