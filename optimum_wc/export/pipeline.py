"""The export pipeline: checkpoint (or float IR) -> compressed IR folder, which appears only when complete.

* :func:`export_ir` is the one place that decides how a checkpoint becomes
  a float IR: a GPTQ/AWQ checkpoint keeps its integer weights
  (:mod:`optimum_wc.export.prequantized`), anything else goes through
  optimum-intel's exporter as a float model.  The model class and the
  optimum-intel hook come through it.
* :func:`float_model`: the float ``openvino.Model`` of a checkpoint.  A local
  safetensors checkpoint is *streamed* (:mod:`optimum_wc.export.streaming`):
  traced with placeholder weights, bound to the memory-mapped shards, no
  float IR written; anything else goes through :func:`export_ir` and is
  read back memory-mapped.
* :func:`compress_and_save`: data-free configs are written layer by layer
  straight into the output IR (:func:`optimum_wc.engine.streaming.compress_to_ir`),
  data-aware ones compressed in memory by ``compress_model``, then saved.
* :func:`export_folder` (``export_model``, both CLIs) and
  :func:`compress_ir_folder` (from a float IR folder you already have) put
  them together in a staging folder moved into place when complete.

Both write ``compression_report.json`` (with peak memory and bytes read and
written) and, when compressing, ``optimum_wc_config.json`` beside the model.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..calibration.samples import load_tokenizer
from ..checkpoints.formats import PrequantizedFormat, detect_prequantized
from ..checkpoints.mxfp4 import check_experts_as, with_experts_as
from ..config import WeightCompressionConfig
from ..engine import compress_model
from ..engine.streaming import compress_to_ir
from ..errors import ExportError
from ..ir.rt_info import read_rt_info
from ..layout import CONFIG_FILE, IR_BIN, IR_XML, REPORT_FILE, copy_side_files, move_into_place, staging_dir, write_config_file
from ..report import Stages, write_report
from ..resources import ResourceMonitor, SpillArena
from ..staging import folder_bytes
from .exporters import model_type_of, verified_exporters
from .float_ir import check_model_source, export_float_ir
from .prequantized import export_prequantized_ir, try_export_prequantized_model
from .streaming import try_export_float_model

logger = logging.getLogger("optimum_wc")


def export_ir(
    model_id: str | os.PathLike,
    output: Path,
    task: str | None = None,
    trust_remote_code: bool = False,
    *,
    float_export: Callable[[], Any] | None = None,
    mxfp4_experts: str | None = None,
) -> PrequantizedFormat | None:
    """Export the checkpoint ``model_id`` to IR files in ``output``, uncompressed; return its pre-quantized format.

    A local GPTQ/AWQ checkpoint keeps its integer weights exactly; any other
    model is exported float by ``float_export()`` (default: optimum-intel's
    exporter through :func:`export_float_ir`; the optimum-intel hook passes
    the call it intercepted).  ``mxfp4_experts``: the IR form of MXFP4 MoE
    experts (:data:`optimum_wc.checkpoints.mxfp4.EXPERTS_AS`; None: ``"i8"``).
    """
    fmt = prequantized_format(model_id, mxfp4_experts)
    if fmt is not None:
        export_prequantized_ir(model_id, Path(output), fmt, task, trust_remote_code)
    elif float_export is not None:
        with verified_exporters(model_type_of(model_id, trust_remote_code), task):
            float_export()
    else:
        export_float_ir(model_id, Path(output), task, trust_remote_code)
    return fmt


def prequantized_format(model_id: str | os.PathLike, mxfp4_experts: str | None = None) -> PrequantizedFormat | None:
    """The pre-quantized format of ``model_id`` (None: a float model), with the chosen form of MXFP4 experts."""
    fmt = detect_prequantized(model_id)
    return None if fmt is None else with_experts_as(fmt, mxfp4_experts)


def calibration_tokenizer(config: WeightCompressionConfig, folder: Path, required: bool = True):
    """The tokenizer saved in ``folder`` when ``config`` calibrates on data (text needs tokenising), else None.

    With ``required=False`` a folder without a loadable tokenizer gives None
    (data given as token ids needs none; text then fails with the fix).
    """
    return load_tokenizer(folder, required) if config.needs_data else None


def float_model(model_id: str | os.PathLike, work: Path, task: str | None = None, trust_remote_code: bool = False,
                *, defer: bool = False, mxfp4_experts: str | None = None) -> tuple[Any, Any, Any]:
    """The ``openvino.Model`` of ``model_id``, what its weights are read from, and its deferred layers.

    A local safetensors checkpoint is streamed (:mod:`optimum_wc.export.streaming`:
    no float IR, weights bound to the memory-mapped shards); a GPTQ/AWQ one
    too, its integer layers put in place (or, with ``defer``, left as
    :class:`~optimum_wc.export.prequantized.DeferredLayers` for
    ``compress_to_ir``, the third item; otherwise None).  Anything else
    (``.bin`` weights, a hub id, an architecture the streamed export cannot
    trace) goes through :func:`export_ir` into ``work`` and is read back
    memory-mapped.  The second item is the streamed checkpoint's weight
    reader (:class:`~optimum_wc.export.streaming.CheckpointWeights`), or the
    float IR's ``.bin`` path.  Side files go to ``work``.
    """
    import openvino as ov

    work.mkdir(parents=True, exist_ok=True)
    fmt = prequantized_format(model_id, mxfp4_experts)
    if fmt is None:
        streamed = try_export_float_model(model_id, work, task, trust_remote_code)
        if streamed is not None:
            return (*streamed, None)
        export_ir(model_id, work, task, trust_remote_code)
    else:
        streamed = try_export_prequantized_model(model_id, work, fmt, task, trust_remote_code, defer=defer)
        if streamed is not None:
            return streamed
        export_prequantized_ir(model_id, work, fmt, task, trust_remote_code, stream=False)  # streaming just failed
    return ov.Core().read_model(work / IR_XML), work / IR_BIN, None


def compress_and_save(model, folder: Path, config: WeightCompressionConfig | None, stages: Stages, *,
                      progress: bool = False, tokenizer: Any = None, monitor: ResourceMonitor | None = None,
                      float_source: Any = None, deferred: Any = None, dataset: Any = None,
                      statistics_path: str | Path | None = None, **report: Any) -> dict:
    """Compress ``model`` with ``config`` (None: keep it float) and save it into ``folder`` with its report.

    Data-free configs are written layer by layer straight into the IR
    (:func:`optimum_wc.engine.streaming.compress_to_ir`, which also makes
    the ``deferred`` layers' constants); data-aware ones compress the whole
    model first (``compress_model``), their results held in a
    :class:`~optimum_wc.resources.SpillArena` (file-backed pages, not
    anonymous memory) until saved: ``model`` must not be used after this call.
    ``dataset`` (else ``config.dataset``) and ``statistics_path``: as in
    :func:`~optimum_wc.engine.compress_model`.
    """
    import openvino as ov

    float_bytes = sum(c.get_byte_size() for c in model.get_ops() if c.get_type_name() == "Constant")
    stages.start("compress")
    # data-aware: the compressed constants wait for the save in file-backed pages (no name, in the output's folder)
    spill = SpillArena(folder, float_bytes + 2**20) if config is not None and config.needs_data else None
    try:
        if config is not None and not config.needs_data:
            compress_to_ir(model, config, folder / IR_XML, progress=progress,
                           source=None if isinstance(float_source, Path) else float_source, deferred=deferred)
            stages.start("save")
        else:
            if deferred is not None:
                raise ExportError("deferred layers are written by compress_to_ir: export with defer=False for this "
                                  "config")
            if config is not None:
                compress_model(model, config, dataset, progress=progress, tokenizer=tokenizer, spill=spill,
                               statistics_path=None if statistics_path is None else str(statistics_path))
            stages.start("save")
            ov.save_model(model, folder / IR_XML, compress_to_fp16=False)
        resources = {}
        if monitor is not None:
            read = getattr(float_source, "bytes_read", None)
            resources = monitor.stop(checkpoint_bytes_read=read, streamed=read is not None)
        float_bin = float_source if isinstance(float_source, Path) else float_bytes
        written = write_report(folder, model, timings=stages.close(), float_bin=float_bin, resources=resources,
                               **report)
    finally:
        if spill is not None:
            spill.close()
    if config is not None:
        write_config_file(folder, config.to_dict())
    return written


def export_folder(
    model_id: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: WeightCompressionConfig | dict | Any | None = None,
    *,
    task: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = False,
    mxfp4_experts: str | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Export ``model_id`` to ``output_dir`` as OpenVINO IR compressed by our engine (``config=None``: kept float).

    Returns the output folder, which holds the IR, the exporter's config and
    tokenizer files, ``compression_report.json`` and ``optimum_wc_config.json``.
    Peak memory and bytes read/written go to the report's ``resources``.
    ``mxfp4_experts``: the IR form of MXFP4 MoE experts (``"i8"``, the
    default, or ``"f4e2m1"``, see :mod:`optimum_wc.checkpoints.mxfp4`).
    ``allow_pickle``: read a checkpoint whose weights are only pickled
    (``pytorch_model.bin``; with ``torch.load(weights_only=True)``), refused by default.
    """
    wc_config = None if config is None else WeightCompressionConfig.coerce(config)
    check_experts_as(mxfp4_experts)
    check_model_source(model_id, trust_remote_code, task, allow_pickle)
    target = Path(output_dir)
    # staging holds the float IR (about the checkpoint's size) and the output (at most that): for a full disk's message
    needed = 2 * folder_bytes(Path(model_id)) if Path(model_id).is_dir() else 0
    with staging_dir(target, needed) as tmp:
        export_into(model_id, tmp / "out", wc_config, tmp / "float", task=task, trust_remote_code=trust_remote_code,
                    progress=progress, mxfp4_experts=mxfp4_experts)
        move_into_place(tmp / "out", target)
    return target


def export_into(model_id: str | os.PathLike, out_dir: Path, config: WeightCompressionConfig | None, work: Path, *,
                task: str | None = None, trust_remote_code: bool = False, progress: bool = False,
                mxfp4_experts: str | None = None) -> dict:
    """The body of :func:`export_folder`: export, compress and save into ``out_dir`` (``work``: scratch, removed).

    Also what ``from_pretrained(..., export=True, quantization_config=WeightCompressionConfig(...))`` runs
    (through the optimum-intel hook).  Returns the report.
    """
    with ResourceMonitor() as monitor:
        stages = Stages(("export", "compress", "save"), progress)
        stages.start("export")
        start = time.perf_counter()
        streams = config is not None and not config.needs_data  # then the integer layers are made while writing
        model, source, deferred = float_model(model_id, work, task, trust_remote_code, defer=streams,
                                              mxfp4_experts=mxfp4_experts)
        logger.info("Exported the float model in %.1f s.", time.perf_counter() - start)
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = calibration_tokenizer(config, work) if config is not None else None
        report = compress_and_save(model, out_dir, config, stages, progress=progress, tokenizer=tokenizer,
                                   monitor=monitor, float_source=source, deferred=deferred, model_id=str(model_id))
        del model
    copy_side_files(work, out_dir, skip=(CONFIG_FILE, IR_XML, IR_BIN))
    shutil.rmtree(work)
    return report


def check_ir_input(input_dir: Path) -> None:
    """An IR folder to compress: it exists and holds ``openvino_model.xml``."""
    if not input_dir.is_dir():
        raise ExportError(f"IR folder {str(input_dir)!r} not found; pass a folder holding {IR_XML} and {IR_BIN}.")
    if not (input_dir / IR_XML).is_file():
        hint = " (it is a Transformers checkpoint: use `optimum-wc export`)" if (input_dir / "config.json").is_file() else ""
        raise ExportError(f"{input_dir} holds no {IR_XML}{hint}; pass an OpenVINO IR folder.")


def compress_ir_folder(input_dir: str | Path, output_dir: str | Path, config: WeightCompressionConfig, *,
                       progress: bool = False, tokenizer: Any = None, dataset: Any = None,
                       statistics_path: str | Path | None = None) -> dict:
    """Compress the float IR in ``input_dir`` into ``output_dir`` (the other files copied); return the report.

    Calibration text (data-aware options) is tokenised with the tokenizer
    saved in ``input_dir`` unless ``tokenizer`` is given.  ``dataset``
    overrides ``config.dataset`` (e.g. samples already tokenised);
    ``statistics_path`` caches the activation statistics between runs.
    """
    import openvino as ov

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_ir_input(input_dir)
    stages = Stages(("read", "compress", "save"), progress, desc="Compress")
    with staging_dir(output_dir, folder_bytes(input_dir)) as tmp, ResourceMonitor() as monitor:  # output <= input
        stages.start("read")
        try:
            model = ov.Core().read_model(input_dir / IR_XML)
        except Exception as exc:  # noqa: BLE001 - openvino raises RuntimeError with pages of text
            raise ExportError(f"cannot read {input_dir / IR_XML}: {' '.join(str(exc).split())[:300]}") from exc
        if read_rt_info(model) is not None:
            raise ExportError(f"{input_dir} was already compressed by optimum-wc; pass the float IR it was made from.")
        if tokenizer is None:
            tokenizer = calibration_tokenizer(config, input_dir, required=False)
        report = compress_and_save(model, tmp, config, stages, progress=progress, tokenizer=tokenizer, monitor=monitor,
                                   float_source=input_dir / IR_BIN, model_id=str(input_dir), source="compress",
                                   dataset=dataset, statistics_path=statistics_path)
        del model
        copy_side_files(input_dir, tmp, skip=(REPORT_FILE, CONFIG_FILE), folders=True)
        move_into_place(tmp, output_dir)
    return report
