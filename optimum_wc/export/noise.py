"""Messages of the libraries we drive that tell the user nothing, dropped at their source during our calls only.

Objective: ``from_pretrained``/``export_model`` print what matters to the
user (our warnings, optimum-intel's and transformers' genuine ones) and
nothing else, without touching any logger's level or the warning filters
outside the call.  Each dropped message is listed here with the reason it
says nothing to the user; anything not listed goes through unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class KnownNoise:
    """A log message of ``logger`` starting with ``prefix``, and why it is noise where we drop it."""

    logger: str
    prefix: str
    why: str


# While optimum-intel's exporter runs (every export path goes through it).
EXPORTER_NOISE = (
    KnownNoise("transformers.configuration_utils", "`torch_dtype` is deprecated",
               "optimum-intel's exporter passes torch_dtype to transformers 5; the user passed nothing"),
    KnownNoise("transformers.modeling_utils", "`loss_type=None` was set in the config",
               "transformers looks the training loss up while the exporter traces the model; no loss is computed"),
    KnownNoise("transformers.masking_utils", "`cache_position` is deprecated as an arg",
               "optimum-intel's patched attention mask still calls transformers' older signature"),
)

# While optimum-intel's from_pretrained runs on a local folder under HF_HUB_OFFLINE: it looks the folder up in the
# hub cache as if it were a model id ("[Errno 2] ... models----tmp--...refs/main", or "Path.replace() takes 2
# positional arguments" for a pathlib.Path), fails, and says so; the hook decides `export` for a local folder itself.
LOCAL_FOLDER_NOISE = (
    KnownNoise("optimum.intel.openvino.modeling_base", "Could not infer whether the model was already converted",
               "optimum-intel's hub-cache lookup cannot apply to a local folder; `export` was decided from its files"),
)


class _Drop(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def dropped(noise: Iterable[KnownNoise], *, tracer_warnings: bool = False) -> Iterator[None]:
    """Within the block, the ``noise`` messages are dropped by their loggers (nothing else is).

    ``tracer_warnings``: also ignore ``torch.jit.TracerWarning``, which
    tracing transformers' code for the export raises by the dozen ("Converting
    a tensor to a Python boolean might cause the trace to be incorrect"):
    optimum-intel's exporter traces with example inputs and its patched
    models are made for it; the warnings concern library code, not the user's.
    """
    by_logger: dict[str, tuple[str, ...]] = {}
    for item in noise:
        by_logger[item.logger] = by_logger.get(item.logger, ()) + (item.prefix,)
    filters = [(logging.getLogger(name), _Drop(prefixes)) for name, prefixes in by_logger.items()]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            if tracer_warnings:
                from torch.jit import TracerWarning

                warnings.simplefilter("ignore", TracerWarning)
            yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)


def exporter_quiet() -> contextlib.AbstractContextManager:
    """:func:`dropped` for a run of optimum-intel's exporter: :data:`EXPORTER_NOISE` and the tracer's warnings."""
    return dropped(EXPORTER_NOISE, tracer_warnings=True)
