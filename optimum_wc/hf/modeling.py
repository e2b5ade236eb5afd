"""``OVModelForCausalLM``: optimum-intel's class, with our engine and safe saving.

``from_pretrained(model, export=True, quantization_config=WeightCompressionConfig(...))``
exports with optimum-intel (stateful KV-cache IR, no NNCF; a GPTQ/AWQ
checkpoint keeps its integer weights, through the hook's dispatch) and
compresses with our engine; ``from_pretrained(saved_dir)`` reloads without
recompressing.  ``save_pretrained`` writes into a temporary folder and moves
it into place, with the tokenizer files and our compression config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from optimum.intel import OVModelForCausalLM as _OVModelForCausalLM

from ..config import WeightCompressionConfig
from ..errors import ExportError
from ..export.float_ir import check_model_source
from ..layout import IR_XML, TOKENIZER_FILES, move_into_place, staging_dir
from . import hook

hook.install()

__all__ = ["OVModelForCausalLM"]


class OVModelForCausalLM(_OVModelForCausalLM):
    """optimum-intel's ``OVModelForCausalLM``, compressing with optimum-wc's engine."""

    @classmethod
    def from_pretrained(cls, model_id, *args, export: bool = False, quantization_config=None,
                        allow_pickle: bool = False, **kwargs):
        """optimum-intel's ``from_pretrained``; with ``export=True`` the checkpoint is checked first, and weights
        that are only pickled are read only with ``allow_pickle=True``."""
        if export:
            check_model_source(model_id, trust_remote_code=kwargs.get("trust_remote_code", False),
                               allow_pickle=allow_pickle)
        elif Path(str(model_id)).exists() and not (Path(str(model_id)) / IR_XML).is_file():
            raise ExportError(f"{model_id} holds no {IR_XML}; to convert a Transformers checkpoint pass export=True.")
        if quantization_config is not None and not isinstance(quantization_config, WeightCompressionConfig):
            quantization_config = WeightCompressionConfig.coerce(quantization_config)
        return super().from_pretrained(model_id, *args, export=export, quantization_config=quantization_config, **kwargs)

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
