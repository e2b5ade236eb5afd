"""Make optimum-intel's ``OVModelForCausalLM`` use our engine for our config.

optimum-intel has no registry for foreign quantization configs: its
``_from_pretrained`` hands any ``quantization_config`` to NNCF through
``OVConfig``, which rejects other types.  So some of its functions are
wrapped; every call without our config goes to optimum-intel (unchanged but
for the local-folder handling at the end):

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
config beside the IR; and ``from_pretrained`` on a local folder (``str`` or
``Path``) decides ``export`` from the folder's files instead of letting
optimum-intel guess it from the hub cache (see :func:`_wrap_from_pretrained`).
A local checkpoint's weight files are checked whole before any export
(:func:`~optimum_wc.checkpoints.integrity.check_checkpoint_files`).  The wrap is installed when
``optimum.intel.openvino.modeling_decoder`` is imported (or at once if it
already is), so importing optimum_wc stays cheap.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path

from ..config import WeightCompressionConfig
from ..export.noise import LOCAL_FOLDER_NOISE, dropped, exporter_quiet

_TARGET = "optimum.intel.openvino.modeling_decoder"
# Between ``_export`` and its ``main_export``/``_from_pretrained`` calls: our config, then the folder compressed with it.
_PENDING = threading.local()
_BASE = "optimum.intel.openvino.modeling_base"
logger = logging.getLogger("optimum_wc")


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
    _wrap_from_pretrained(cls)
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

        def float_export():
            with exporter_quiet():
                return original_export(model_name_or_path, output, *args, **kwargs)

        export_ir(model_name_or_path, Path(output), task, trust, float_export=float_export)

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


def _wrap_from_pretrained(cls) -> None:
    """``cls.from_pretrained`` on a local folder (``str`` or ``pathlib.Path``) decides ``export`` from the folder's files.

    optimum-intel guesses whether a model is already an IR by looking it up
    in the hub cache when HF_HUB_OFFLINE is set, even for a local folder: the
    guess fails ("[Errno 2] ... refs/main"; "Path.replace() takes 2 positional
    arguments" for a Path), is logged, and ``export`` is kept as given.  For a
    local folder the answer is in the folder, so it is decided here by
    optimum-intel's own rule (:func:`_export_for_folder`), the path is passed
    as ``str``, and only that failed guess's message is dropped
    (:data:`~optimum_wc.export.noise.LOCAL_FOLDER_NOISE`).
    """
    original = cls.from_pretrained.__func__  # OVBaseModel's
    signature = inspect.signature(original)

    def from_pretrained(klass, model_id, *args, **kwargs):
        folder = _local_folder(model_id)
        if folder is None or kwargs.get("from_onnx"):
            return original(klass, model_id, *args, **kwargs)
        bound = signature.bind(klass, os.fspath(model_id), *args, **kwargs)
        given = bound.arguments.get("export", False)
        bound.arguments["export"] = _export_for_folder(klass, folder, given, bound.arguments.get("subfolder", ""))
        with dropped(LOCAL_FOLDER_NOISE):
            return original(*bound.args, **bound.kwargs)

    cls.from_pretrained = classmethod(from_pretrained)


def _local_folder(model_id) -> Path | None:
    if not isinstance(model_id, (str, os.PathLike)):
        return None
    path = Path(os.fspath(model_id))
    return path if path.is_dir() else None


def _export_for_folder(klass, folder: Path, export: bool, subfolder: str) -> bool:
    """optimum-intel's rule, as it applies without HF_HUB_OFFLINE: a folder that holds no IR is exported."""
    pattern = klass._search_pattern
    if export or any(re.search(pattern, str(p)) for p in (folder / (subfolder or ".")).glob("*")):
        return export
    logger.warning("%s holds no OpenVINO IR: exporting it (export=True); save the model with save_pretrained() "
                   "to load it without exporting next time.", folder)
    return True


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
