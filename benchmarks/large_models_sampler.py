"""Run one command in a fresh process and sample its memory and the disk it uses (for ``benchmarks.large_models``).

Every ``interval`` seconds, summed over the process and all its descendants
(the ``ppid`` tree from ``/proc/*/stat``, plus anything left in its session,
so re-parented grandchildren still count): ``Pss_Anon`` and ``Pss`` from
``/proc/PID/smaps_rollup`` (shared copy-on-write pages counted once); and the used bytes of the output's file system
(``os.statvfs``: ``(f_blocks - f_bfree) * f_frsize``) minus the value just
before the start.  The kernel's own peak (``ru_maxrss`` of the reaped child,
the largest single process's VmHWM) is reported beside the sampled peaks: it
catches spikes shorter than the interval, but counts file-backed pages too.

Linux only; the disk figure counts every writer on that file system.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

GIB = float(2**30)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every process now alive."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (by ppid), plus the processes of its session (started with a new session)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    found.update(pid for pid, (_, sid) in table.items() if sid == root)
    return sorted(found)


def memory_kib(pid: int) -> tuple[int, int]:
    """(anonymous, resident) memory of ``pid`` in KiB, proportional set sizes; (0, 0) for a process gone.

    ``Pss_Anon``/``Pss`` from ``/proc/PID/smaps_rollup``: a page shared by
    several processes (a forked child's copy-on-write pages) is divided
    between them, so the sum over a process tree counts it once (``RssAnon``
    would count it in every process).  Falls back to ``RssAnon``/``VmRSS``.
    """
    found = _kib_fields(f"/proc/{pid}/smaps_rollup", "Pss_Anon:", "Pss:")
    if any(found):
        return found
    return _kib_fields(f"/proc/{pid}/status", "RssAnon:", "VmRSS:")


def _kib_fields(path: str, anon_key: str, rss_key: str) -> tuple[int, int]:
    """The two ``key: N kB`` values of a /proc file, (0, 0) where the file or a key is missing."""
    anon = rss = 0
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(anon_key):
                    anon = int(line.split()[1])
                elif line.startswith(rss_key):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return anon, rss


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so every run reads the checkpoint from the disk; False if not allowed."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def fs_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def dir_size(path: Path) -> int:
    """Sum of the sizes of the files under ``path`` (0 if absent)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


@dataclass
class Measurement:
    exit_code: int
    wall_s: float
    peak_anon_gib: float  # sampled, summed over the tree
    peak_rss_gib: float  # sampled, summed over the tree
    maxrss_gib: float  # kernel: peak VmHWM of the largest single process (unsampled)
    extra_disk_gib: float  # peak of (used bytes of the file system - used bytes before the start)
    output_gib: float  # the output folder's file sizes once done
    samples: int
    max_processes: int

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def run_sampled(argv: Sequence[str], output: Path, log_path: Path, *, cwd: Path | None = None,
                env: Mapping[str, str] | None = None, interval: float = 0.1) -> Measurement:
    """Run ``argv`` (its stdout and stderr into ``log_path``), sampling until it exits; measure ``output`` after."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    os.sync()  # flush earlier writes (the checkpoint, deleted outputs) so they do not land during this run
    drop_page_cache()
    base = fs_used(output.parent)
    peak_anon = peak_rss = peak_disk = 0
    samples = max_procs = 0
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=dict(env) if env is not None else None, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree = process_tree(proc.pid)
            mem = [memory_kib(p) for p in tree]
            peak_anon = max(peak_anon, sum(m[0] for m in mem))
            peak_rss = max(peak_rss, sum(m[1] for m in mem))
            peak_disk = max(peak_disk, fs_used(output.parent) - base)
            samples += 1
            max_procs = max(max_procs, len(tree))
            time.sleep(interval)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    peak_disk = max(peak_disk, fs_used(output.parent) - base)
    return Measurement(
        exit_code=proc.returncode, wall_s=wall, peak_anon_gib=peak_anon * 1024 / GIB,
        peak_rss_gib=peak_rss * 1024 / GIB, maxrss_gib=usage.ru_maxrss * 1024 / GIB,
        extra_disk_gib=peak_disk / GIB, output_gib=dir_size(output) / GIB, samples=samples, max_processes=max_procs,
    )
