"""Which architectures optimum-intel's OpenVINO exporter takes, and the transformers caps we lift after verifying.

Objective: an export either runs with an exporter whose output is known to
be right for the installed transformers, or fails before any work with an
error naming the architecture and the fix.

optimum-intel declares, per architecture, the transformers versions its
export config was written for (``MIN_TRANSFORMERS_VERSION`` /
``MAX_TRANSFORMERS_VERSION``, checked in ``optimum.exporters.openvino.convert``).
Some caps are conservative: optimum-intel 2.2.0 caps the Gemma family at
transformers 5.0, yet on transformers 5.5.4 its Gemma, Gemma-2 and Gemma-3
(text) exports give the logits of transformers' own models to 1e-6
(``tests/test_architectures.py``).  :data:`VERIFIED_BEYOND_CAP` lists those
architectures with the last transformers version checked; for them alone,
and only for the duration of an export, the cap is raised to the installed
version (:func:`verified_exporters`).  Every other check stays as
optimum-intel wrote it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from packaging.version import Version

from ..errors import ExportError

DEFAULT_TASK = "text-generation-with-past"

# model_type -> the newest transformers version with which the export was checked against transformers' logits
# (tests/test_architectures.py).  Adding an entry means adding the architecture to that test.
VERIFIED_BEYOND_CAP: dict[str, str] = {
    "gemma": "5.5.4",
    "gemma2": "5.5.4",
    "gemma3_text": "5.5.4",
}


def model_type_of(model_id, trust_remote_code: bool = False) -> str | None:
    """The ``model_type`` in the config of the local checkpoint ``model_id``; None when it cannot be read here."""
    from pathlib import Path

    if not (Path(str(model_id)) / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code).model_type
    except Exception:  # noqa: BLE001 - the exporter reports an unreadable config itself
        return None


def _versions() -> tuple[Version, str]:
    from importlib import metadata

    import transformers

    try:
        intel = metadata.version("optimum-intel")
    except metadata.PackageNotFoundError:  # pragma: no cover - optimum-intel is a dependency
        intel = "?"
    return Version(transformers.__version__), intel


def export_config_class(model_type: str, task: str = DEFAULT_TASK):
    """optimum-intel's OpenVINO export config class for ``model_type`` and ``task``, or None when it has none."""
    import optimum.exporters.openvino.model_configs  # noqa: F401 - registers the OpenVINO export configs
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, exporter="openvino",
                                                                 library_name="transformers")
    except KeyError:
        return None
    if task not in tasks:
        return None
    constructor = tasks[task]
    return getattr(constructor, "func", constructor)


def _bound(value) -> Version | None:
    return None if value is None else Version(str(value))


def check_exportable(model_type: str, architectures: list[str], task: str | None = None) -> None:
    """Raise :class:`ExportError` naming the architecture when optimum-intel cannot export it here.

    Two cases: optimum-intel has no OpenVINO exporter for ``model_type``
    (and ``task``), or its exporter excludes the installed transformers and
    the architecture is not in :data:`VERIFIED_BEYOND_CAP`.
    """
    task = task or DEFAULT_TASK
    installed, intel = _versions()
    name = f"{model_type!r} ({', '.join(architectures)})" if architectures else repr(model_type)
    cls = export_config_class(model_type, task)
    if cls is None:
        raise ExportError(
            f"the architecture {name} is not supported by optimum-intel {intel}'s OpenVINO exporter for the task "
            f"{task!r}, so optimum-wc cannot export it; use an architecture optimum-intel supports (e.g. llama, "
            "mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, gpt_neox, opt, gpt2, falcon, qwen3_moe, mixtral), or "
            "a newer optimum-intel that supports it.")
    low, high = _bound(getattr(cls, "MIN_TRANSFORMERS_VERSION", None)), _bound(getattr(cls, "MAX_TRANSFORMERS_VERSION", None))
    if low is not None and installed < low:
        raise ExportError(f"optimum-intel {intel} exports the architecture {name} only with transformers >= {low}; "
                          f"transformers {installed} is installed: upgrade transformers.")
    if high is not None and installed > high and not _verified(model_type, installed):
        verified = VERIFIED_BEYOND_CAP.get(model_type)
        extra = f" (optimum-wc has verified it up to {verified})" if verified else ""
        raise ExportError(f"optimum-intel {intel} exports the architecture {name} only with transformers <= {high}"
                          f"{extra}; transformers {installed} is installed: install transformers<={verified or high} "
                          "in the environment that exports.")


def _verified(model_type: str, installed: Version) -> bool:
    verified = VERIFIED_BEYOND_CAP.get(model_type)
    return verified is not None and installed <= Version(verified)


@contextlib.contextmanager
def verified_exporters(model_type: str | None, task: str | None = None) -> Iterator[None]:
    """For the duration of the block, ``model_type``'s exporter accepts the installed transformers if verified.

    Only an architecture of :data:`VERIFIED_BEYOND_CAP` whose cap is below
    the installed version, itself at most the verified one, is changed:
    its export config class's ``MAX_TRANSFORMERS_VERSION`` becomes the
    installed version, then is restored.  Anything else is left untouched.
    """
    installed, _ = _versions()
    cls = export_config_class(model_type, task or DEFAULT_TASK) if model_type in VERIFIED_BEYOND_CAP else None
    high = _bound(getattr(cls, "MAX_TRANSFORMERS_VERSION", None)) if cls is not None else None
    if cls is None or high is None or installed <= high or not _verified(model_type, installed):
        yield
        return
    own = "MAX_TRANSFORMERS_VERSION" in cls.__dict__
    saved = cls.__dict__.get("MAX_TRANSFORMERS_VERSION")
    cls.MAX_TRANSFORMERS_VERSION = str(installed)
    try:
        yield
    finally:
        if own:
            cls.MAX_TRANSFORMERS_VERSION = saved
        else:
            del cls.MAX_TRANSFORMERS_VERSION
