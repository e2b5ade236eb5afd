"""The float IR to compare a compressed model with: an IR folder as it is, or a checkpoint exported once and cached.

A user evaluating ``OUT`` against the Transformers checkpoint it was exported
from (``optimum-wc eval OUT --reference MODEL_DIR``, or
:func:`reference_ir` in Python) gets the checkpoint's float IR, exported on
first use into the user's cache and reused afterwards:

* where: ``$OPTIMUM_WC_CACHE/references``, else
  ``$XDG_CACHE_HOME/optimum-wc/references``, else
  ``~/.cache/optimum-wc/references`` (never beside the evaluated model,
  which stays untouched; deleting the folder is always safe);
* ``<checkpoint folder name>-<hash of its absolute path>/<fingerprint>/``:
  one IR per checkpoint folder, the stale ones of an earlier fingerprint
  removed when a new one is written;
* the fingerprint hashes every file of the checkpoint (relative path,
  size, modification time in ns), the bytes of its ``config.json``, and
  the versions of optimum-wc, optimum-intel, transformers and OpenVINO: a
  re-downloaded, edited or re-saved checkpoint, or an upgrade, exports again;
  reading the weights to hash them would cost as much as the export;
* the IR is written by :func:`~optimum_wc.export.pipeline.export_folder`
  (a staging folder moved into place when complete), so an interrupted
  export leaves nothing that could be taken for a cached IR.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

from ..checkpoints.integrity import check_pickled_weights
from ..errors import ExportError
from ..layout import IR_XML

CACHE_ENV = "OPTIMUM_WC_CACHE"
_VERSIONED = ("optimum-intel", "transformers", "openvino")


def cache_root() -> Path:
    """``$OPTIMUM_WC_CACHE``, else ``$XDG_CACHE_HOME/optimum-wc``, else ``~/.cache/optimum-wc``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "optimum-wc"


def _versions() -> list[str]:
    from importlib import metadata

    from ..version import __version__

    found = [f"optimum-wc {__version__}"]
    for name in _VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return found


def checkpoint_fingerprint(folder: Path) -> str:
    """A hash that changes when any file of ``folder`` (hidden ones aside) or a package the export uses changes."""
    folder = Path(folder)
    digest = hashlib.sha256("\n".join(_versions()).encode())
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return digest.hexdigest()[:20]


def cache_entry(folder: Path, root: Path | None = None) -> Path:
    """The cache folder of checkpoint ``folder``'s float IRs (one per fingerprint, the latest kept)."""
    resolved = Path(folder).resolve()
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return (root or cache_root()) / "references" / f"{resolved.name}-{key}"


def is_ir_folder(path: Path) -> bool:
    return (Path(path) / IR_XML).is_file()


def check_reference(path: str | os.PathLike, allow_pickle: bool = False) -> None:
    """``path`` is an IR folder or a Transformers checkpoint folder (config.json), else an error with the fix;
    a checkpoint whose weights are only pickled needs ``allow_pickle``."""
    path = Path(os.fspath(path))
    if is_ir_folder(path):
        return
    if not path.is_dir() or not (path / "config.json").is_file():
        what = "not found" if not path.exists() else f"holds neither {IR_XML} nor config.json"
        raise ExportError(f"reference {str(path)!r} {what}; pass the float OpenVINO IR folder, or the Transformers "
                          "checkpoint folder the model was exported from.")
    check_pickled_weights(path, allow_pickle)


def reference_ir(model: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 trust_remote_code: bool = False, progress: bool = False, allow_pickle: bool = False,
                 say: Callable[[str], None] | None = None) -> Path:
    """The float OpenVINO IR folder of ``model``, to evaluate a compressed model against.

    ``model`` is an IR folder (returned as it is) or a Transformers checkpoint
    folder, whose float IR is exported on first use into the cache
    (``cache_dir``, default :func:`cache_root`; see the module's docstring)
    and found there afterwards.  ``say`` receives one line when an export
    starts or a cached IR is used.
    """
    from .pipeline import export_folder  # (here: check_reference stays light for the command line)

    path = Path(os.fspath(model))
    check_reference(path, allow_pickle)
    if is_ir_folder(path):
        return path
    entry = cache_entry(path, None if cache_dir is None else Path(cache_dir))
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write the reference cache {entry}: {exc.strerror or exc}; set {CACHE_ENV} to a "
                          "writable folder, or pass the float IR folder as the reference.") from exc
    target = entry / checkpoint_fingerprint(path)
    if is_ir_folder(target):
        if say:
            say(f"Using the float IR of {path} cached in {target}")
        return target
    if say:
        say(f"Exporting the float reference {path} once (cached in {target})")
    export_folder(path, target, None, trust_remote_code=trust_remote_code, progress=progress,
                  allow_pickle=allow_pickle)
    for stale in entry.iterdir():  # IRs of the checkpoint as it was before
        if stale != target and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    return target
