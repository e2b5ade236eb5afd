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
(:func:`optimum_wc.ir.binding.bind_constants`), and the nodes OpenVINO's
serializer would fold into constants are folded
(:func:`optimum_wc.ir.serialize.fold_postponed_constants`): the result is
the float model the classic export would have written and read back, with
no float IR on disk and the weights in page cache, not in anonymous memory
(but for those folded constants, held in memory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterator

from ..checkpoints.placeholders import NotStreamable, placeholder_model
from ..checkpoints.tensors import CheckpointTensors
from ..errors import ModelError
from ..ir.binding import bind_constants, parameter_name
from ..ir.serialize import fold_postponed_constants
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
def _exporter_patched(tensors: CheckpointTensors, trust_remote_code: bool, captured: dict,
                      packed: dict[str, tuple[int, ...]] | None = None) -> Iterator[None]:
    """optimum-intel's exporter with placeholder weights, handing its IR to ``captured`` instead of saving it."""
    from optimum.exporters.tasks import TasksManager
    import optimum.exporters.openvino.__main__ as export_main
    import optimum.exporters.openvino.convert as convert

    def load(task, model_name_or_path, *args, **kwargs):
        dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
        model, placeholders = placeholder_model(Path(model_name_or_path), tensors, dtype, trust_remote_code, packed)
        captured["placeholders"], captured["torch_model"] = placeholders, model
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
                       task: str | None = None, trust_remote_code: bool = False,
                       packed: dict[str, tuple[int, ...]] | None = None) -> tuple[Any, dict[str, str]]:
    """The float ``openvino.Model`` of the checkpoint, weights bound to its files, and ``{parameter: tensor name}``.

    ``model_id`` is the folder the exporter reads the config and tokenizer
    from; ``tensors`` are the weights.  Side files (config, tokenizer,
    generation config) go to ``side_dir``.  ``packed`` parameters (see
    :func:`~optimum_wc.checkpoints.placeholders.placeholder_model`) keep
    their placeholder constants, for the caller to replace.

    Raises :class:`NotStreamable` when the checkpoint cannot be exported this
    way (the caller then exports it the classic way); the side files it wrote
    are removed then.
    """
    side_dir = Path(side_dir)
    before = set(side_dir.iterdir()) if side_dir.is_dir() else set()
    try:
        captured: dict[str, Any] = {}
        with _exporter_patched(tensors, trust_remote_code, captured, packed):
            export_float_ir(model_id, side_dir, task, trust_remote_code, expect_ir=False)
        model = captured.get("model")
        if model is None:
            raise NotStreamable("the exporter produced no model")
        # The converter shares the memory of the traced model's small tensors (norms, biases, sinks) with their
        # Constants instead of copying it: the IR keeps the torch model alive, or those Constants read freed memory
        model._optimum_wc_traced_model = captured.pop("torch_model")
        placeholders = {p: t for p, t in captured["placeholders"].items() if t is not None}
        try:
            bind_constants(model, set(placeholders), lambda p: tensors.array(placeholders[p]),
                           lambda p: tensors.info[placeholders[p]].dtype == "BF16")
        except ModelError as exc:
            raise NotStreamable(str(exc)) from exc
        # what the IR file would hold: e.g. MoE experts [experts, in, out] transposed once, as save_model writes them
        folded = fold_postponed_constants(model)
        if folded:
            logger.info("Folded %d nodes marked postponed_constant (%s, ...), as OpenVINO's serializer does.",
                        len(folded), folded[0])
    except NotStreamable:
        for item in side_dir.iterdir() if side_dir.is_dir() else ():
            if item.is_file() and item not in before:
                item.unlink()
        raise
    return model, placeholders


_SAME_TYPE = {"BF16": "bf16", "F16": "f16", "F32": "f32"}  # safetensors dtype -> IR element type


class CheckpointWeights:
    """Reads the float weight of a site of the bound model straight from the checkpoint file (see ``compress_to_ir``).

    Objective: large ``pread`` calls instead of page faults on the mapping;
    :meth:`read` returns None for a site not bound to the checkpoint.
    """

    POOL_BYTES = 1 << 30  # read buffers kept for reuse, at most

    def __init__(self, tensors: CheckpointTensors, placeholders: dict[str, str]):
        self.tensors, self.placeholders = tensors, placeholders
        self._pool: dict[int, list] = {}  # nbytes -> free buffers
        self._lock = threading.Lock()

    def _tensor(self, site) -> str | None:
        return self.placeholders.get(parameter_name(site.name))

    def read(self, site):
        from ..quant.lowering import Bfloat16Bits

        name = self._tensor(site)
        if name is None:
            return None
        info = self.tensors.info[name]  # the constant holds exactly the tensor: same shape, same type
        if tuple(info.shape) != tuple(site.shape) or _SAME_TYPE.get(info.dtype) != site.element_type.get_type_name():
            return None
        size = self.tensors.buffer_bytes(name)
        with self._lock:
            free = self._pool.get(size)
            buffer = free.pop() if free else None
        array = self.tensors.read(name, out=buffer)
        return array.view(Bfloat16Bits) if info.dtype == "BF16" else array

    def recycle(self, array) -> None:
        """``array`` (from :meth:`read`) is no longer used: keep its memory for the next read of that size."""
        import numpy as np

        while isinstance(array.base, np.ndarray):
            array = array.base
        with self._lock:
            held = sum(n * len(b) for n, b in self._pool.items())
            if held + array.nbytes <= self.POOL_BYTES:
                self._pool.setdefault(array.nbytes, []).append(array)

    @property
    def bytes_read(self) -> int:
        return self.tensors.bytes_read


def try_export_float_model(model_id, side_dir: Path, task=None, trust_remote_code=False):
    """(model, :class:`CheckpointWeights`) of :func:`export_float_model`, or None (logged) when not streamable."""
    tensors = streamable(model_id)
    if tensors is None:
        return None
    try:
        model, placeholders = export_float_model(model_id, side_dir, tensors, task, trust_remote_code)
        return model, CheckpointWeights(tensors, placeholders)
    except NotStreamable as exc:
        logger.info("Not streaming the weights of %s (%s): exporting a float IR first.", model_id, exc)
        return None
