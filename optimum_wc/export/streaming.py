"""A float safetensors checkpoint -> the float ``openvino.Model`` in memory, its weights never loaded.

Objective: the exporter's graph at a cost independent of the model's size.
optimum-intel's exporter runs as usual (same tracing, same stateful
patching, same config/tokenizer/generation files), with two changes made
for the duration of the call:

* the model it loads is built with placeholder matrices
  (:func:`optimum_wc.checkpoints.placeholders.placeholder_model`);
* the IR it would save is kept in memory instead (``save_model`` and the
  size-based NNCF INT8 step that reads the file back are skipped).

The placeholders are then bound to the checkpoint's memory-mapped tensors
(:func:`optimum_wc.ir.binding.bind_constants`): the result is the float model
the classic export would have written and read back, with no float IR on
disk and the weights in page cache, not in anonymous memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from ..checkpoints.placeholders import NotStreamable, placeholder_model
from ..checkpoints.tensors import CheckpointTensors
from ..errors import ExportError, ModelError
from ..ir.binding import bind_constants
from .float_ir import export_float_ir

logger = logging.getLogger("optimum_wc")


def streamable(model_id: str | os.PathLike) -> CheckpointTensors | None:
    """The checkpoint's tensors when ``model_id`` is a local folder of safetensors shards, else None."""
    path = Path(str(model_id))
    if not path.is_dir():
        return None
    tensors = CheckpointTensors(path)
    return tensors if len(tensors) else None


@contextlib.contextmanager
def _exporter_patched(tensors: CheckpointTensors, trust_remote_code: bool, captured: dict) -> Iterator[None]:
    """optimum-intel's exporter with placeholder weights, handing its IR to ``captured`` instead of saving it."""
    from optimum.exporters.tasks import TasksManager
    import optimum.exporters.openvino.__main__ as export_main
    import optimum.exporters.openvino.convert as convert

    def load(task, model_name_or_path, *args, **kwargs):
        dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
        model, placeholders = placeholder_model(Path(model_name_or_path), tensors, dtype, trust_remote_code)
        captured["placeholders"] = placeholders
        return model

    def keep(model, path, compress_to_fp16=False):
        if "model" in captured:
            raise NotStreamable("the exporter wrote more than one model")
        if compress_to_fp16:
            raise NotStreamable("the exporter asked for fp16 compression")
        captured["model"], captured["path"] = model, Path(path)

    saved = (TasksManager.get_model_from_task, convert.save_model, export_main._apply_model_size_based_quantization)
    TasksManager.get_model_from_task = staticmethod(load)
    convert.save_model = keep
    export_main._apply_model_size_based_quantization = lambda *args, **kwargs: None
    try:
        yield
    finally:
        TasksManager.get_model_from_task = staticmethod(saved[0])
        convert.save_model, export_main._apply_model_size_based_quantization = saved[1], saved[2]


def export_float_model(model_id: str | os.PathLike, side_dir: Path, tensors: CheckpointTensors,
                       task: str | None = None, trust_remote_code: bool = False) -> Any:
    """The float ``openvino.Model`` of the checkpoint, weights bound to its files; side files go to ``side_dir``.

    Raises :class:`NotStreamable` when the checkpoint cannot be exported this
    way (the caller then exports it the classic way).
    """
    captured: dict[str, Any] = {}
    with _exporter_patched(tensors, trust_remote_code, captured):
        export_float_ir(model_id, side_dir, task, trust_remote_code, expect_ir=False)
    model = captured.get("model")
    if model is None:
        raise NotStreamable("the exporter produced no model")
    placeholders = captured["placeholders"]
    try:
        bind_constants(model, set(placeholders), lambda p: tensors.array(placeholders[p]),
                       lambda p: tensors.info[placeholders[p]].dtype == "BF16")
    except ModelError as exc:
        raise NotStreamable(str(exc)) from exc
    return model


def try_export_float_model(model_id, side_dir: Path, task=None, trust_remote_code=False):
    """(model, tensors) from :func:`export_float_model`, or None (logged) when the checkpoint is not streamable."""
    tensors = streamable(model_id)
    if tensors is None:
        return None
    try:
        return export_float_model(model_id, side_dir, tensors, task, trust_remote_code), tensors
    except NotStreamable as exc:
        logger.info("Not streaming the weights of %s (%s): exporting a float IR first.", model_id, exc)
        for item in side_dir.iterdir() if side_dir.is_dir() else ():
            if item.is_file():
                item.unlink()
        return None
    except ExportError:
        raise
