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
from ..checkpoints.staging import model_with_placeholders, stage_float_checkpoint
from ..errors import ExportError, ModelError
from ..ir.decompression import gather_matmul_inputs, replace_with_compressed
from ..ir.rt_info import write_prequantized_info
from ..ir.sites import find_weight_sites
from ..layout import IR_XML, copy_side_files
from .float_ir import export_float_ir

logger = logging.getLogger("optimum_wc")


_PATCHED_16BIT_SUFFIX = "._openvino_orig_weight"  # optimum-intel's name for weights of float16/bfloat16 exports


def _torch_name(const_name: str) -> str:
    """``self.model.x.weight`` (or ``self.model.x._openvino_orig_weight``) -> ``model.x.weight``."""
    name = const_name[len("self."):] if const_name.startswith("self.") else const_name
    if name.endswith(_PATCHED_16BIT_SUFFIX):
        name = name[: -len(_PATCHED_16BIT_SUFFIX)] + ".weight"
    return name


def apply_prequantized(ov_model, ckpt: PrequantizedCheckpoint) -> list[dict[str, Any]]:
    """Replace each quantized linear's float weight in ``ov_model`` by its exact integer subgraph, in place.

    The weight Constant of layer ``<prefix>`` is found by its friendly name
    (``self.<prefix>.weight``, or ``self.<prefix>._openvino_orig_weight`` in a
    float16/bfloat16 export, as optimum-intel's exporter names it).  Layers
    whose groups are not contiguous get a Gather on their activation.
    Returns one record per layer, also written to the IR's rt_info
    (``optimum_wc/prequantized``).
    """
    sites, _ = find_weight_sites(ov_model)
    by_name = {_torch_name(s.name): s for s in sites}
    records = []
    for layer in ckpt.layers:
        site = by_name.get(layer.weight_name)
        if site is None or site.kind != "matmul":
            raise ModelError(
                f"{layer.prefix}.qweight: the exported IR has no float MatMul weight named "
                f"self.{layer.weight_name}, so "
                "its integer weights cannot be put in place. The exporter named or fused the layer differently; "
                "report this architecture to optimum-wc."
            )
        if site.shape != (layer.out_features, layer.in_features) or site.reduction_axis != 1:
            raise ModelError(
                f"{layer.prefix}.qweight: the IR's weight self.{layer.weight_name} has shape {list(site.shape)} "
                f"(input axis {site.reduction_axis}), not [{layer.out_features}, {layer.in_features}] "
                "reduced on axis 1; "
                "report this architecture to optimum-wc."
            )
        lw = ckpt.layer_weights(layer)
        if lw.permutation is not None:
            gather_matmul_inputs(site, lw.permutation)
        replace_with_compressed(site, lw.compressed)
        records.append({
            "name": layer.weight_name,
            "mode": lw.compressed.mode.value,
            "group_size": lw.compressed.group_size,
            "act_order": lw.permutation is not None,
            "shape": [layer.out_features, layer.in_features],
        })
        del lw
    write_prequantized_info(ov_model, {"format": ckpt.fmt.to_dict(), "layers": records})
    return records


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


def export_prequantized_ir(
    model_id: str | os.PathLike,
    output: Path,
    fmt: PrequantizedFormat | None = None,
    task: str | None = None,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """Export a GPTQ/AWQ checkpoint folder to ``output`` keeping its integer weights exactly.

    A drop-in for :func:`optimum_wc.export.float_ir.export_float_ir`: ``output`` gets
    ``openvino_model.xml/.bin`` and the exporter's config/tokenizer files
    (``config.json`` without ``quantization_config``).  Everything else stays
    float (our engine may compress it afterwards).  Returns the per-layer records.
    """
    import openvino as ov

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ckpt = PrequantizedCheckpoint(model_id, fmt, trust_remote_code=trust_remote_code)
    logger.info("%s: %s checkpoint (%s, %d-bit, group size %d%s%s), %d quantized linear layers.",
                ckpt.path, ckpt.fmt.method.upper(), ckpt.fmt.checkpoint_format, ckpt.fmt.bits, ckpt.fmt.group_size,
                ", sym" if ckpt.fmt.sym else ", asym", ", act-order" if ckpt.fmt.desc_act else "", len(ckpt.layers))
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
