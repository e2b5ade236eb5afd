"""What optimum-wc records in an IR's ``rt_info`` (saved into the XML), under one key, with a schema version.

* ``optimum_wc/config``: the compression config (JSON);
* ``optimum_wc/layers``: one record per weight (mode, group size, error, ...);
* ``optimum_wc/prequantized``: the source format and layers of a GPTQ/AWQ
  checkpoint whose integer weights were kept;
* ``optimum_wc/schema_version``: the layout of the entries above
  (:data:`optimum_wc.layout.SCHEMA_VERSION`); an IR written before versioning
  has none and reads as version 1.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..layout import SCHEMA_KEY, SCHEMA_VERSION, check_schema_version

RT_INFO_KEY = "optimum_wc"


def _set(model, name: str, value: Any) -> None:
    model.set_rt_info(json.dumps(value) if name != SCHEMA_KEY else str(value), [RT_INFO_KEY, name])


def _get(model, name: str) -> Any | None:
    if not model.has_rt_info([RT_INFO_KEY, name]):
        return None
    return json.loads(model.get_rt_info([RT_INFO_KEY, name]).astype(str))


def _checked_version(model) -> None:
    key = [RT_INFO_KEY, SCHEMA_KEY]
    value = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
    check_schema_version(value, f"the IR's rt_info ({model.get_friendly_name()})")


def write_rt_info(model, config_dict: dict, layers: Iterable[dict]) -> None:
    """Record the config and the per-layer choices in the IR."""
    model.set_rt_info(json.dumps(config_dict, sort_keys=True), [RT_INFO_KEY, "config"])
    _set(model, "layers", list(layers))
    _set(model, SCHEMA_KEY, SCHEMA_VERSION)


def read_rt_info(model) -> tuple[dict, list[dict]] | None:
    """The config and per-layer records written by :func:`write_rt_info`, or None."""
    if not model.has_rt_info([RT_INFO_KEY, "config"]):
        return None
    _checked_version(model)
    return _get(model, "config"), _get(model, "layers")


def write_prequantized_info(model, info: dict) -> None:
    """Record the source format and layers of a pre-quantized checkpoint in the IR."""
    _set(model, "prequantized", info)
    _set(model, SCHEMA_KEY, SCHEMA_VERSION)


def read_prequantized_info(model) -> dict | None:
    """The record written by :func:`write_prequantized_info`, or None."""
    if not model.has_rt_info([RT_INFO_KEY, "prequantized"]):
        return None
    _checked_version(model)
    return _get(model, "prequantized")
