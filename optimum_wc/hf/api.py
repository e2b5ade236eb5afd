"""``export_model``: the export pipeline, returning a ready ``OVModelForCausalLM``."""

from __future__ import annotations

import os
from typing import Any

from ..config import WeightCompressionConfig
from ..export.pipeline import export_folder


def export_model(
    model_id: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: WeightCompressionConfig | dict | Any | None = None,
    *,
    task: str | None = None,
    trust_remote_code: bool = False,
    load: bool = True,
    progress: bool = False,
    mxfp4_experts: str | None = None,
    allow_pickle: bool = False,
):
    """Export ``model_id`` to ``output_dir`` as OpenVINO IR compressed by our engine.

    ``config=None`` keeps the weights float.  Returns the loaded
    :class:`~optimum_wc.hf.modeling.OVModelForCausalLM` (or None with ``load=False``).
    ``compression_report.json`` is written beside the model; ``progress``
    shows progress bars (steps and layers).  ``mxfp4_experts``: the IR form
    of a gpt-oss checkpoint's MXFP4 experts, ``"i8"`` (default: run
    compressed by OpenVINO 2026.4's CPU plugin) or ``"f4e2m1"`` (as stored,
    half the size; see :mod:`optimum_wc.checkpoints.mxfp4`).  ``allow_pickle``:
    read weights that are only pickled (refused by default).  See
    :func:`optimum_wc.export.pipeline.export_folder`.
    """
    target = export_folder(model_id, output_dir, config, task=task, trust_remote_code=trust_remote_code,
                           progress=progress, mxfp4_experts=mxfp4_experts, allow_pickle=allow_pickle)
    if not load:
        return None
    from .modeling import OVModelForCausalLM

    return OVModelForCausalLM.from_pretrained(target)
