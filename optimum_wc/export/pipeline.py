"""The export pipeline: checkpoint (or float IR) -> compressed IR folder, which appears only when complete.

* :func:`export_ir` is the one place that decides how a checkpoint becomes
  an IR: a GPTQ/AWQ checkpoint keeps its integer weights
  (:mod:`optimum_wc.export.prequantized`), anything else goes through
  optimum-intel's exporter as a float model.  ``export_model``, both CLIs,
  the model class and the optimum-intel hook all come through it.
* :func:`export_folder`: checkpoint -> IR (staged) -> read back (memory-mapped)
  -> our engine -> save -> move into place.  Only one float copy of the
  weights is ever in memory.
* :func:`compress_ir_folder`: the same from a float IR folder you already have.

Both write ``compression_report.json`` and, when compressing,
``optimum_wc_config.json`` beside the model.
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
from ..config import WeightCompressionConfig
from ..engine import compress_model
from ..errors import ExportError
from ..ir.rt_info import read_rt_info
from ..layout import CONFIG_FILE, IR_BIN, IR_XML, REPORT_FILE, copy_side_files, move_into_place, staging_dir, write_config_file
from ..report import Stages, write_report
from .float_ir import check_model_source, export_float_ir
from .prequantized import export_prequantized_ir

logger = logging.getLogger("optimum_wc")


def export_ir(
    model_id: str | os.PathLike,
    output: Path,
    task: str | None = None,
    trust_remote_code: bool = False,
    *,
    float_export: Callable[[], Any] | None = None,
) -> PrequantizedFormat | None:
    """Export the checkpoint ``model_id`` to IR files in ``output``, uncompressed; return its pre-quantized format.

    A local GPTQ/AWQ checkpoint keeps its integer weights exactly; any other
    model is exported float by ``float_export()`` (default: optimum-intel's
    exporter through :func:`export_float_ir`; the optimum-intel hook passes
    the call it intercepted).
    """
    fmt = detect_prequantized(model_id)
    if fmt is not None:
        export_prequantized_ir(model_id, Path(output), fmt, task, trust_remote_code)
    elif float_export is not None:
        float_export()
    else:
        export_float_ir(model_id, Path(output), task, trust_remote_code)
    return fmt


def calibration_tokenizer(config: WeightCompressionConfig, folder: Path, required: bool = True):
    """The tokenizer saved in ``folder`` when ``config`` calibrates on data (text needs tokenising), else None.

    With ``required=False`` a folder without a loadable tokenizer gives None
    (data given as token ids needs none; text then fails with the fix).
    """
    return load_tokenizer(folder, required) if config.needs_data else None


def _save(model, folder: Path, config: WeightCompressionConfig | None, stages: Stages, **report: Any) -> dict:
    """Save ``model`` as the IR of ``folder`` with its report (and our config file when compressed)."""
    import openvino as ov

    ov.save_model(model, folder / IR_XML, compress_to_fp16=False)
    written = write_report(folder, model, timings=stages.close(), **report)
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
) -> Path:
    """Export ``model_id`` to ``output_dir`` as OpenVINO IR compressed by our engine (``config=None``: kept float).

    Returns the output folder, which holds the IR, the exporter's config and
    tokenizer files, ``compression_report.json`` and ``optimum_wc_config.json``.
    """
    import openvino as ov

    wc_config = None if config is None else WeightCompressionConfig.coerce(config)
    check_model_source(model_id, trust_remote_code)
    target = Path(output_dir)
    with staging_dir(target) as tmp:
        float_dir, out_dir = tmp / "float", tmp / "out"
        stages = Stages(("export", "compress", "save"), progress)
        stages.start("export")
        start = time.perf_counter()
        export_ir(model_id, float_dir, task, trust_remote_code)
        logger.info("Exported the float IR in %.1f s.", time.perf_counter() - start)
        out_dir.mkdir()
        model = ov.Core().read_model(float_dir / IR_XML)
        stages.start("compress")
        if wc_config is not None:
            compress_model(model, wc_config, progress=progress, tokenizer=calibration_tokenizer(wc_config, float_dir))
        stages.start("save")
        _save(model, out_dir, wc_config, stages, model_id=model_id, float_bin=float_dir / IR_BIN)
        del model
        copy_side_files(float_dir, out_dir, skip=(CONFIG_FILE,))
        shutil.rmtree(float_dir)
        move_into_place(out_dir, target)
    return target


def check_ir_input(input_dir: Path) -> None:
    """An IR folder to compress: it exists and holds ``openvino_model.xml``."""
    if not input_dir.is_dir():
        raise ExportError(f"IR folder {str(input_dir)!r} not found; pass a folder holding {IR_XML} and {IR_BIN}.")
    if not (input_dir / IR_XML).is_file():
        hint = " (it is a Transformers checkpoint: use `optimum-wc export`)" if (input_dir / "config.json").is_file() else ""
        raise ExportError(f"{input_dir} holds no {IR_XML}{hint}; pass an OpenVINO IR folder.")


def compress_ir_folder(input_dir: str | Path, output_dir: str | Path, config: WeightCompressionConfig, *,
                       progress: bool = False, tokenizer: Any = None) -> dict:
    """Compress the float IR in ``input_dir`` into ``output_dir`` (the other files copied); return the report.

    Calibration text (data-aware options) is tokenised with the tokenizer
    saved in ``input_dir`` unless ``tokenizer`` is given.
    """
    import openvino as ov

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_ir_input(input_dir)
    stages = Stages(("read", "compress", "save"), progress, desc="Compress")
    with staging_dir(output_dir) as tmp:
        stages.start("read")
        try:
            model = ov.Core().read_model(input_dir / IR_XML)
        except Exception as exc:  # noqa: BLE001 - openvino raises RuntimeError with pages of text
            raise ExportError(f"cannot read {input_dir / IR_XML}: {' '.join(str(exc).split())[:300]}") from exc
        if read_rt_info(model) is not None:
            raise ExportError(f"{input_dir} was already compressed by optimum-wc; pass the float IR it was made from.")
        stages.start("compress")
        if tokenizer is None:
            tokenizer = calibration_tokenizer(config, input_dir, required=False)
        compress_model(model, config, progress=progress, tokenizer=tokenizer)
        stages.start("save")
        report = _save(model, tmp, config, stages, model_id=str(input_dir), float_bin=input_dir / IR_BIN,
                       source="compress")
        del model
        copy_side_files(input_dir, tmp, skip=(REPORT_FILE, CONFIG_FILE), folders=True)
        move_into_place(tmp, output_dir)
    return report
