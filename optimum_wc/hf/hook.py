"""Make optimum-intel's ``OVModelForCausalLM`` use our engine for our config.

optimum-intel has no registry for foreign quantization configs: its
``_from_pretrained`` hands any ``quantization_config`` to NNCF through
``OVConfig``, which rejects other types.  So three of its functions are
wrapped; every call without our config goes to optimum-intel unchanged:

* ``_export`` (what ``from_pretrained(..., export=True)`` runs) notes a
  pending :class:`~optimum_wc.config.WeightCompressionConfig`;
* the decoder module's ``main_export`` then runs our pipeline
  (:func:`optimum_wc.export.pipeline.export_into`, as ``export_model`` does:
  weights streamed from the checkpoint, data-free configs written layer by
  layer), and ``_from_pretrained`` loads that compressed IR as it is.
  Without a pending config, ``main_export`` goes through our dispatch point
  :func:`optimum_wc.export.pipeline.export_ir` (a local GPTQ/AWQ checkpoint
  keeps its integer weights, anything else goes to optimum-intel's exporter);
* ``_from_pretrained`` with our config on an IR folder (no export) loads it
  uncompressed and uncompiled, compresses it with
  :func:`optimum_wc.compress_model`, then compiles.

``_save_openvino_config`` is wrapped too, so ``save_pretrained`` writes our
config beside the IR.  The wrap is installed when
``optimum.intel.openvino.modeling_decoder`` is imported (or at once if it
already is), so importing optimum_wc stays cheap.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import sys
import threading
from pathlib import Path

from ..config import WeightCompressionConfig

_TARGET = "optimum.intel.openvino.modeling_decoder"
# Between ``_export`` and its ``main_export``/``_from_pretrained`` calls: our config, then the folder compressed with it.
_PENDING = threading.local()
_BASE = "optimum.intel.openvino.modeling_base"


def _wrap(decoder_module, base_module) -> None:
    cls = decoder_module.OVModelForCausalLM
    if getattr(cls, "_optimum_wc_patched", False):
        return
    original = cls.__dict__["_from_pretrained"].__func__

    def _from_pretrained(klass, model_id, config, *args, quantization_config=None, **kwargs):
        config = _without_stale_quantization_config(model_id, config)
        if isinstance(quantization_config, WeightCompressionConfig) and _is_compressed_export(model_id):
            model = original(klass, model_id, config, *args, quantization_config=None, **kwargs)
            model._wc_config = quantization_config  # exported and compressed by main_export below, as export_model does
            return model
        if not isinstance(quantization_config, WeightCompressionConfig):
            from ..layout import CONFIG_FILE

            model = original(klass, model_id, config, *args, quantization_config=quantization_config, **kwargs)
            saved = Path(str(model_id)) / CONFIG_FILE
            if quantization_config is None and saved.is_file():
                model._wc_config = WeightCompressionConfig.from_json(saved)
            return model
        from ..engine import compress_model

        compile_model = kwargs.pop("compile", True)
        model = original(klass, model_id, config, *args, quantization_config=None, compile=False, **kwargs)
        tokenizer = None
        if quantization_config.needs_data:
            from ..calibration.samples import load_tokenizer

            tokenizer = load_tokenizer(getattr(config, "name_or_path", None) or model_id)
        compress_model(model.model, quantization_config, tokenizer=tokenizer)
        model._wc_config = quantization_config
        if compile_model:
            model.compile()
        return model

    cls._from_pretrained = classmethod(_from_pretrained)
    original_cls_export = cls._export.__func__  # defined on a base class

    def _export(klass, model_id, config, *args, quantization_config=None, **kwargs):
        _PENDING.config = quantization_config if isinstance(quantization_config, WeightCompressionConfig) else None
        _PENDING.compressed = None
        try:
            return original_cls_export(klass, model_id, config, *args, quantization_config=quantization_config, **kwargs)
        finally:
            _PENDING.config = _PENDING.compressed = None

    cls._export = classmethod(_export)
    cls._optimum_wc_patched = True

    original_export = decoder_module.main_export

    def main_export(model_name_or_path, output, *args, **kwargs):
        """optimum-intel's ``_export``, through our pipeline when our config is pending, else our dispatch point."""
        task, trust = kwargs.get("task"), kwargs.get("trust_remote_code", False)
        if Path(str(model_name_or_path)).is_dir():  # a damaged download is named before the exporter trips on it
            from ..checkpoints.integrity import check_checkpoint_files

            check_checkpoint_files(model_name_or_path)
        wc_config = getattr(_PENDING, "config", None)
        if wc_config is not None:  # the same export and compression as export_model (weights streamed when possible)
            from ..export.pipeline import export_into

            export_into(model_name_or_path, Path(output), wc_config, Path(output) / ".optimum-wc-float", task=task,
                        trust_remote_code=trust)
            _PENDING.config, _PENDING.compressed = None, Path(output)
            return
        from ..export.pipeline import export_ir

        export_ir(model_name_or_path, Path(output), task, trust,
                  float_export=lambda: original_export(model_name_or_path, output, *args, **kwargs))

    decoder_module.main_export = main_export

    base = base_module.OVBaseModel
    original_save = base._save_openvino_config

    def _save_openvino_config(self, save_directory):
        wc_config = getattr(self, "_wc_config", None)
        if wc_config is not None:
            from ..layout import write_config_file

            write_config_file(Path(save_directory), wc_config.to_dict())
        return original_save(self, save_directory)

    base._save_openvino_config = _save_openvino_config


def _is_compressed_export(model_id) -> bool:
    """``model_id`` is the folder our ``main_export`` just exported and compressed for the pending ``_export``."""
    compressed = getattr(_PENDING, "compressed", None)
    return compressed is not None and Path(str(model_id)) == compressed


def _without_stale_quantization_config(model_id, config):
    """``config`` without the ``quantization_config`` that the IR folder ``model_id``'s own config.json lacks.

    A GPTQ/AWQ checkpoint exported through the hook is an IR whose integer
    weights are already in the graph: its config.json has no
    ``quantization_config``, and the model's config must not claim one either
    (it would be saved again by ``save_pretrained``).
    """
    saved = Path(str(model_id)) / "config.json"
    if getattr(config, "quantization_config", None) is None or not saved.is_file():
        return config
    try:
        if "quantization_config" in json.loads(saved.read_text()):
            return config
    except (OSError, ValueError):
        return config
    import copy

    config = copy.deepcopy(config)
    del config.quantization_config
    return config


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs :func:`_wrap` right after optimum-intel's decoder module is executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _wrap(module, sys.modules[_BASE])
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Patch now if optimum-intel's decoder module is loaded, else when it is."""
    if _TARGET in sys.modules:
        _wrap(sys.modules[_TARGET], sys.modules[_BASE])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
