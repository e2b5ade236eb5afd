"""How an output folder appears: complete or not at all, written by one run at a time.

Objective: whatever happens to a run (an error, Ctrl-C, SIGTERM, SIGKILL, a
power cut, a full disk, a second run to the same folder), the target folder
holds either its previous content or one run's complete output, and no
staging folder of a dead run survives the next run to the same target.

Beside ``TARGET`` a run keeps, while it runs:

* ``.TARGET.lock``: an advisory ``flock`` (held, not just present, means a live
  run: the kernel releases it when its process dies, so a pid reused after a
  reboot cannot keep a dead run's folders alive); it holds the owner's pid for
  the message of a second run;
* ``.TARGET.tmp-XXXX``: the staging folder, renamed into place when complete.

A run that takes the lock removes the staging (``.tmp-``) and set-aside
(``.old-``) folders of dead runs to the same target; a run that finds the lock
held refuses at once (waiting could mean minutes of silence).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from .errors import ExportError

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
_STOPS: list[int] = []  # the signals the command line received during this run (see on_stop_signal)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: the same clean-up runs."""


def on_stop_signal(signum, frame=None):  # noqa: ARG001 - signal handler signature
    """Signal handler of the command line for SIGINT / SIGTERM: remember it, then raise it.

    Remembered because Python drops an exception raised inside a ``__del__``
    ("Exception ignored in ..."): the run then goes on, and
    :func:`move_into_place` still refuses to publish.
    """
    import signal

    _STOPS.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def forget_stop_signals() -> None:
    """Start a run with no signal remembered."""
    _STOPS.clear()


def raise_if_stopped() -> None:
    """Raise the interrupt a signal handler raised earlier, if Python dropped it."""
    if _STOPS:
        on_stop_signal(_STOPS[0])


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` beside it."""
    return target.parent / f".{target.name}.lock"


def leftovers(target: Path) -> list[Path]:
    """The staging and set-aside folders of runs to ``target`` found beside it."""
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes) and p.is_dir())


def _owner(path: Path) -> str:
    """What the lock file says of the run holding it (for the message)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


@contextlib.contextmanager
def target_lock(target: Path) -> Iterator[None]:
    """Hold ``target``'s lock for the block; refuse if another live run holds it.

    The lock file is removed while still held, and a run that locked a file
    another run had just removed tries again, so two runs never both believe
    they own the target.
    """
    import fcntl

    path = lock_path(target)
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ExportError(
                f"another optimum-wc run{_owner(path)} is writing {target}; wait for it to finish, or choose "
                f"another output folder (if no such run is alive, delete {path})."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # it was removed by the run that just finished: lock the new one
    else:
        raise ExportError(f"could not lock {path}: it keeps being replaced; retry, or choose another output folder.")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def disk_error(exc: BaseException, target: Path, written: int, needed: int = 0) -> ExportError:
    """The message for a full or read-only disk under ``target``: the folder, what is free and needed.

    ``needed``: the caller's estimate of the run's bytes; ``written``: what the
    staging folder held when the disk filled (the need is more than both).
    """
    import shutil

    folder = target.parent
    if getattr(exc, "errno", None) == errno.EROFS or os.strerror(errno.EROFS) in str(exc):
        return ExportError(f"cannot write {target}: the file system of {folder} is read-only; choose a writable "
                           "output folder.")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    return ExportError(
        f"no space left to write {target}: {folder} has {_mb(free)} free and the run needs about "
        f"{_mb(max(needed, written))}{'' if needed > written else ' or more'} (it had written {_mb(written)} when the "
        f"disk filled); free space there or choose another output folder (nothing was written; the previous content, if any, is unchanged){_cause(exc)}."
    )


def _cause(exc: BaseException) -> str:
    """The original message when it did not say "no space" itself (OpenVINO's iostream errors)."""
    text = " ".join(str(exc).split())[:200]
    return "" if isinstance(exc, OSError) or not text else f"; the writer said: {text}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (file sizes only: no data is read)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _is_disk_error(exc: BaseException, folder: Path) -> bool:
    """A full / read-only disk: its OSError, or an error that came while ``folder``'s disk is full.

    OpenVINO's serializer reports a full disk as ``RuntimeError: basic_ios::clear:
    iostream error`` (no errno); the disk being (nearly) full then is the sign.
    """
    import shutil

    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in DISK_ERRORS
    if any(os.strerror(code) in str(exc) for code in DISK_ERRORS):
        return True
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return False
    return usage.free < max(2**20, usage.total // 100)


@contextlib.contextmanager
def staging_dir(target: Path, needed: int = 0) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system), removed on failure and on interrupts.

    Holds ``target``'s lock meanwhile and first removes what dead runs left
    beside it; a full or read-only disk becomes one :class:`ExportError`
    (``needed``: the caller's estimate of the bytes the run writes, for it).
    """
    import shutil  # (here, not at the top: `import optimum_wc` stays as light as the config)
    import tempfile

    target = Path(target).resolve()
    with contextlib.ExitStack() as stack:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(target_lock(target))
            for stale in leftovers(target):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        except OSError as exc:
            raise cannot_write(exc, target, needed) from exc
        try:
            yield tmp
        except (OSError, RuntimeError) as exc:
            if not _is_disk_error(exc, tmp):
                raise
            written = folder_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_error(exc, target, written, needed) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def cannot_write(exc: OSError, target: Path, needed: int = 0) -> ExportError:
    """The message when the output folder cannot even be started (read-only, full, no permission)."""
    if exc.errno in DISK_ERRORS:
        return disk_error(exc, target, 0, needed)
    return ExportError(f"cannot write the output folder {target}: {exc.strerror or exc}; choose a writable location.")


def move_into_place(tmp: Path, target: Path) -> None:
    """Replace ``target`` by the complete folder ``tmp``: old aside, new in, old removed; on failure old restored.

    Refuses (raises the interrupt) if the run was interrupted, even if Python dropped the interrupt.
    """
    import shutil
    import tempfile

    raise_if_stopped()
    target = Path(target).resolve()
    old = None
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"{target} exists and is not a folder; choose another output path.")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
