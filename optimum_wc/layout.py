"""What an optimum-wc folder holds, and how a folder appears: complete or not at all.

One home for file names (the IR, our config, the report, tokenizer files),
for the schema version of what we write into them; the staging folder that
is written beside the target and moved into place when complete lives in
:mod:`optimum_wc.staging` (re-exported here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelError
from .staging import move_into_place, staging_dir  # noqa: F401 - the staging folder's home is staging.py

IR_XML = "openvino_model.xml"
IR_BIN = "openvino_model.bin"
CONFIG_FILE = "optimum_wc_config.json"
REPORT_FILE = "compression_report.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
)

# Version of the layout of optimum_wc_config.json and of the IR's optimum_wc rt_info.
# Files written before versioning carry none and read as version 1 (same layout).
SCHEMA_VERSION = 1
SCHEMA_KEY = "schema_version"


def check_schema_version(value: Any, where: str) -> int:
    """The schema version ``value`` read from ``where`` (None: 1); raises for one this version cannot read."""
    version = 1 if value is None else value
    if isinstance(version, str) and version.strip().isdigit():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{where}: {SCHEMA_KEY}={value!r} is not a version number; the file is damaged: re-export the model.")
    if version > SCHEMA_VERSION:
        raise ModelError(
            f"{where} was written by a newer optimum-wc (schema version {version}; this one reads up to "
            f"{SCHEMA_VERSION}); upgrade optimum-wc (pip install -U optimum-wc), or re-export with this version."
        )
    return version


def write_config_file(folder: Path, config_dict: dict[str, Any]) -> Path:
    """Write ``optimum_wc_config.json`` (the config's dict plus the schema version) into ``folder``."""
    path = Path(folder) / CONFIG_FILE
    path.write_text(json.dumps({**config_dict, SCHEMA_KEY: SCHEMA_VERSION}, indent=2, sort_keys=True))
    return path


def read_config_file(path: Path) -> dict[str, Any]:
    """The config dict of an ``optimum_wc_config.json``, its schema version checked and removed."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object; the file is damaged: re-export the model.")
    check_schema_version(data.pop(SCHEMA_KEY, None), str(path))
    return data


def copy_side_files(source: Path, dest: Path, skip: tuple[str, ...] = (), folders: bool = False) -> None:
    """Copy the files of ``source`` beside an IR into ``dest``: all but the IR, ``skip`` and hidden ones.

    ``folders`` copies sub-folders too.
    """
    import shutil

    for item in sorted(Path(source).iterdir()):
        if item.name in (IR_XML, IR_BIN, *skip) or item.name.startswith("."):
            continue
        if item.is_file():
            shutil.copy2(item, Path(dest) / item.name)
        elif folders and item.is_dir():
            shutil.copytree(item, Path(dest) / item.name)
