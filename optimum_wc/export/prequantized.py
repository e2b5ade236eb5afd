"""A GPTQ/AWQ checkpoint -> OpenVINO IR, its integer weights kept exactly.

A staging copy of the checkpoint with the ``quantization_config`` stripped
and without the quantized tensors is exported by optimum-intel (as any float
checkpoint), the model being built with placeholder weights for the
quantized layers (views of one small shared buffer, so their float weights
are never materialised); then each quantized linear's weight Constant
(friendly name ``self.<prefix>.weight``) is replaced by the integer subgraph
built from the packed tensors::

    Constant(u4 | i4 | u8 | i8) -> Convert(f16) [-> Subtract(zero point)] -> Multiply(f16 scale)
        -> Reshape -> MatMul

so the OpenVINO model computes what the quantized model computes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..checkpoints.formats import PrequantizedFormat
from ..checkpoints.reader import PrequantizedCheckpoint
from ..checkpoints.placeholders import NotStreamable
from ..checkpoints.staging import model_with_placeholders, stage_float_checkpoint, stage_side_files
from ..errors import ExportError, ModelError
from ..ir.binding import parameter_name
from ..ir.decompression import constant_arrays, gather_matmul_inputs, place_placeholders, replace_with_compressed
from ..ir.rt_info import read_prequantized_info, write_prequantized_info
from ..ir.sites import find_weight_sites
from ..layout import IR_XML, copy_side_files
from .float_ir import export_float_ir
from .streaming import CheckpointWeights, export_float_model, streamable

logger = logging.getLogger("optimum_wc")


def _sites_by_parameter(ov_model) -> dict[str, Any]:
    sites, _ = find_weight_sites(ov_model)
    return {parameter_name(s.name): s for s in sites}


def _site_of(layer, by_name: dict[str, Any]):
    """The float MatMul weight site of quantized ``layer`` in the exported IR (checked against the layer)."""
    site = by_name.get(layer.weight_name)
    if site is None or site.kind != "matmul":
        raise ModelError(
            f"{layer.prefix} (quantized): the exported IR has no float MatMul weight named "
            f"self.{layer.weight_name}, so "
            "its integer weights cannot be put in place. The exporter named or fused the layer differently; "
            "report this architecture to optimum-wc."
        )
    if site.shape != layer.ir_shape or site.reduction_axis != len(layer.ir_shape) - 1:
        raise ModelError(
            f"{layer.prefix} (quantized): the IR's weight self.{layer.weight_name} has shape {list(site.shape)} "
            f"(input axis {site.reduction_axis}), not {list(layer.ir_shape)} "
            f"reduced on axis {len(layer.ir_shape) - 1}; "
            "report this architecture to optimum-wc."
        )
    return site


def _record(layer, lw) -> dict[str, Any]:
    return {
        "name": layer.weight_name,
        "mode": lw.compressed.mode.value,
        "group_size": lw.compressed.group_size,
        "act_order": lw.permutation is not None,
        "shape": list(layer.ir_shape),
    }


def apply_prequantized(ov_model, ckpt: PrequantizedCheckpoint) -> list[dict[str, Any]]:
    """Replace each quantized linear's float weight in ``ov_model`` by its exact integer subgraph, in place.

    The weight Constant of layer ``<prefix>`` is found by its friendly name
    (``self.<prefix>.weight``, or ``self.<prefix>._openvino_orig_weight`` in a
    float16/bfloat16 export, as optimum-intel's exporter names it).  Layers
    whose groups are not contiguous get a Gather on their activation.
    Returns one record per layer, also written to the IR's rt_info
    (``optimum_wc/prequantized``).
    """
    by_name = _sites_by_parameter(ov_model)
    records = []
    for layer in ckpt.layers:
        site = _site_of(layer, by_name)
        lw = ckpt.layer_weights(layer)
        if lw.permutation is not None:
            gather_matmul_inputs(site, lw.permutation)
        replace_with_compressed(site, lw.compressed)
        records.append(_record(layer, lw))
        del lw
    write_prequantized_info(ov_model, {"format": ckpt.fmt.to_dict(), "layers": records})
    return records


class DeferredLayers:
    """The quantized layers of a streamed export: placeholders in the graph, converted when the ``.bin`` is written.

    Objective: the same IR as :func:`apply_prequantized`, with one layer's
    unpacked integers in memory at a time.  Every layer is unpacked and
    checked once here, before anything is written (its layout and its
    act-order Gather are fixed now), then again by :meth:`compute` when the
    writer (``compress_to_ir``) reaches its constants.  ``owners`` maps each
    placeholder constant's name to its layer.
    """

    def __init__(self, ov_model, ckpt: PrequantizedCheckpoint):
        by_name = _sites_by_parameter(ov_model)
        self.ckpt = ckpt
        self._site_names: dict[int, str] = {}
        layouts, records = [], []
        for layer in ckpt.layers:
            site = _site_of(layer, by_name)
            lw = ckpt.layer_weights(layer)
            cw = lw.compressed
            if (cw.zero_point is not None) != cw.mode.is_asym:
                raise ModelError(f"{layer.prefix}: {cw.mode.value} weights with"
                                 f"{'out' if cw.zero_point is None else ''} zero points; report this to optimum-wc.")
            if lw.permutation is not None:
                gather_matmul_inputs(site, lw.permutation)
            layouts.append((layer, site, cw.format, cw.codes.shape, cw.scale.shape, cw.group_size))
            self._site_names[id(layer)] = site.name
            records.append(_record(layer, lw))
            del lw, cw
        # ``zeros`` backs every placeholder: it must outlive the XML serialization
        self.owners, self.zeros = place_placeholders(layouts)
        write_prequantized_info(ov_model, {"format": ckpt.fmt.to_dict(), "layers": records})

    def compute(self, layer) -> dict[str, tuple]:
        """The layer's constants, ``{friendly name: (bytes, element type, shape)}``, unpacked from the checkpoint."""
        return constant_arrays(self.ckpt.layer_weights(layer).compressed, self._site_names[id(layer)])


@contextlib.contextmanager
def _placeholder_loading(ckpt: PrequantizedCheckpoint, trust_remote_code: bool) -> Iterator[None]:
    """While active, optimum's exporter gets the model with *placeholder* quantized-linear weights.

    Objective: peak memory of one float copy of the non-quantized parts plus
    the packed weights.  The model is built without allocating parameters
    (``accelerate.init_empty_weights``, buffers such as rotary tables are
    real), the staged float tensors are assigned as they are, and every
    quantized linear's weight is a placeholder view of one shared buffer: the
    traced IR holds a Constant of the right shape for each layer
    (:func:`optimum_wc.checkpoints.staging.model_with_placeholders`), which
    :func:`apply_prequantized` replaces by the exact integer subgraph.  The values of these placeholders never reach the
    final IR.  Patches ``TasksManager.get_model_from_task`` for the duration.
    """
    from optimum.exporters.tasks import TasksManager

    original = TasksManager.get_model_from_task

    def load(task, model_name_or_path, *args, **kwargs):
        return model_with_placeholders(Path(model_name_or_path), ckpt, trust_remote_code)

    TasksManager.get_model_from_task = staticmethod(load)
    try:
        yield
    finally:
        TasksManager.get_model_from_task = original


@contextlib.contextmanager
def _work_dir(output: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=".optimum-wc-prequantized-", dir=output))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _open_checkpoint(model_id, fmt: PrequantizedFormat | None, trust_remote_code: bool) -> PrequantizedCheckpoint:
    ckpt = PrequantizedCheckpoint(model_id, fmt, trust_remote_code=trust_remote_code)
    logger.info("%s: %s checkpoint (%s, %d-bit, group size %d%s%s), %d quantized linear layers.",
                ckpt.path, ckpt.fmt.method.upper(), ckpt.fmt.checkpoint_format, ckpt.fmt.bits, ckpt.fmt.group_size,
                ", sym" if ckpt.fmt.sym else ", asym", ", act-order" if ckpt.fmt.desc_act else "", len(ckpt.layers))
    return ckpt


def export_prequantized_ir(
    model_id: str | os.PathLike,
    output: Path,
    fmt: PrequantizedFormat | None = None,
    task: str | None = None,
    trust_remote_code: bool = False,
    *,
    stream: bool = True,
) -> list[dict[str, Any]]:
    """Export a GPTQ/AWQ checkpoint folder to ``output`` keeping its integer weights exactly.

    A drop-in for :func:`optimum_wc.export.float_ir.export_float_ir`: ``output`` gets
    ``openvino_model.xml/.bin`` and the exporter's config/tokenizer files
    (``config.json`` without ``quantization_config``).  Everything else stays
    float (our engine may compress it afterwards).  Returns the per-layer records.
    The float parts are streamed from the shards when possible
    (:func:`try_export_prequantized_model`; ``stream=False``: do not try);
    otherwise a staging copy of the checkpoint's float parts is exported to a
    float IR first.
    """
    import openvino as ov

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ckpt = _open_checkpoint(model_id, fmt, trust_remote_code)
    tensors = streamable(ckpt.path) if stream else None
    streamed = _streamed(ckpt, tensors, output, task, trust_remote_code, defer=False) if tensors is not None else None
    if streamed is not None:  # float parts bound to the checkpoint, the integer layers in place: write it
        model = streamed[0]
        ov.save_model(model, output / IR_XML, compress_to_fp16=False)
        records = read_prequantized_info(model)["layers"]
        del model, streamed
        logger.info("Kept the %s weights of %d layers exactly in %.1f s (float parts streamed).",
                    ckpt.fmt.method.upper(), len(records), time.perf_counter() - start)
        return records
    with _work_dir(output) as work:
        staged, float_dir = work / "checkpoint", work / "float"
        stage_float_checkpoint(ckpt, staged, dequantized_layers=False)
        try:
            with _placeholder_loading(ckpt, trust_remote_code):
                export_float_ir(staged, float_dir, task, trust_remote_code)
        except ExportError as exc:  # an architecture our loader cannot build: the exporter loads dequantized weights
            logger.warning("Exporting with placeholder weights failed (%s); exporting dequantized weights instead "
                           "(peak memory: the whole model in its float dtype).", exc)
            shutil.rmtree(staged, ignore_errors=True)
            shutil.rmtree(float_dir, ignore_errors=True)
            stage_float_checkpoint(ckpt, staged, dequantized_layers=True)
            export_float_ir(staged, float_dir, task, trust_remote_code)
        shutil.rmtree(staged)
        model = ov.Core().read_model(float_dir / IR_XML)
        records = apply_prequantized(model, ckpt)
        ov.save_model(model, output / IR_XML, compress_to_fp16=False)
        del model
        copy_side_files(float_dir, output)
    logger.info("Kept the %s weights of %d layers exactly in %.1f s.",
                ckpt.fmt.method.upper(), len(records), time.perf_counter() - start)
    return records


def try_export_prequantized_model(model_id: str | os.PathLike, work: Path, fmt: PrequantizedFormat | None = None,
                                  task: str | None = None, trust_remote_code: bool = False, *, defer: bool = True):
    """A GPTQ/AWQ checkpoint streamed: ``(model, CheckpointWeights, DeferredLayers or None)``, or None (logged).

    The float parts are bound to the memory-mapped shards, as for a float
    checkpoint (:func:`~optimum_wc.export.streaming.export_float_model`); no
    staged checkpoint and no float IR are written.  With ``defer`` the
    quantized layers are :class:`DeferredLayers` for ``compress_to_ir``;
    otherwise they are put in place now (:func:`apply_prequantized`).  None
    when the checkpoint is not a folder of safetensors shards or the model
    cannot be traced with placeholders: use ``export_prequantized_ir(..., stream=False)``.
    The exporter's side files (float ``config.json``, tokenizer) go to ``work``.
    """
    tensors = streamable(model_id)
    if tensors is None:
        return None
    return _streamed(_open_checkpoint(model_id, fmt, trust_remote_code), tensors, Path(work), task, trust_remote_code,
                     defer=defer)


def _streamed(ckpt: PrequantizedCheckpoint, tensors, work: Path, task, trust_remote_code: bool, *, defer: bool):
    work.mkdir(parents=True, exist_ok=True)
    side = Path(tempfile.mkdtemp(prefix=".optimum-wc-config-", dir=work))
    try:
        stage_side_files(ckpt, side)
        packed = {layer.weight_name: layer.ir_shape for layer in ckpt.layers}  # experts: [experts, out, in]
        model, placeholders = export_float_model(side, work, tensors, task, trust_remote_code, packed=packed)
    except NotStreamable as exc:
        logger.info("Not streaming the float weights of %s (%s): staging a float checkpoint first.", ckpt.path, exc)
        return None
    finally:
        shutil.rmtree(side, ignore_errors=True)
    if defer:
        return model, CheckpointWeights(tensors, placeholders), DeferredLayers(model, ckpt)
    apply_prequantized(model, ckpt)
    return model, CheckpointWeights(tensors, placeholders), None
