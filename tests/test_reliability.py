"""Faults during an export (issue 17): what the user sees and what is left on disk.

Ctrl-C and SIGTERM while running, SIGKILL then a new run, two runs to one
target, a full disk (injected and a real 256 KB tmpfs) and a read-only one.
Each test states the promise: the target holds its previous content or one
run's complete output; no staging folder, set-aside folder or lock survives.
docs/RELIABILITY.md tabulates what these tests measure.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimum_wc import ExportError, WeightCompressionConfig
from optimum_wc.staging import folder_bytes, leftovers, lock_path, move_into_place, staging_dir

ROOT = Path(__file__).resolve().parent.parent
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "optimum_wc", "-q", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until ``predicate()`` holds while ``proc`` is still running."""
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before the moment to test: {proc.communicate()}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def lock_holder(tmp_path):
    """A live process holding ``tmp_path/.out.lock`` (as a running export does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path(tmp_path / "out"))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


# --- interrupts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "terminated")])
def test_signal_during_export_leaves_nothing(llama_dir, tmp_path, signum, code, word):
    target = tmp_path / "out"
    proc = cli("export", str(llama_dir), str(target), "--weight-format", "int4", "--group-size", "32")
    wait_for(lambda: any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()), proc)
    time.sleep(1.0)  # inside the float export
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == f"optimum-wc: {word}" + (" (SIGTERM)" if signum == signal.SIGTERM else ""), err
    assert sum("optimum-wc:" in line for line in lines) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no target, no staging folder, no lock


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt, on purpose
def test_an_interrupt_python_dropped_still_stops_the_publish(tmp_path):
    """Ctrl-C landing in a ``__del__`` is printed and dropped by Python; the run must still not publish."""
    from optimum_wc.cli import stop_signals_handled
    from optimum_wc.staging import on_stop_signal

    class InterruptedWhileCollected:
        def __del__(self):
            on_stop_signal(signal.SIGINT)

    target = tmp_path / "out"
    with stop_signals_handled():
        with pytest.raises(KeyboardInterrupt):
            with staging_dir(target) as tmp:
                InterruptedWhileCollected()  # Python: "Exception ignored in ... KeyboardInterrupt", and goes on
                (tmp / "openvino_model.xml").write_text("complete")
                move_into_place(tmp, target)
    assert sorted(os.listdir(tmp_path)) == []


def test_sigkill_leftovers_are_removed_by_the_next_run(llama_dir, tmp_path):
    target = tmp_path / "out"
    proc = cli("export", str(llama_dir), str(target), "--weight-format", "int8")
    wait_for(lambda: any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()), proc)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    left = hidden(tmp_path)  # what SIGKILL leaves: the staging folder and the lock file (no longer held)
    assert len(left) == 2 and left[0] == ".out.lock" and left[1].startswith(".out.tmp-"), left
    again = cli("export", str(llama_dir), str(target), "--weight-format", "int8")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert hidden(tmp_path) == [] and (target / "openvino_model.xml").is_file()


# --- stale staging and the lock ----------------------------------------------------------------------------------


def test_stale_staging_of_a_dead_run_is_removed(tmp_path):
    target = tmp_path / "out"
    stale = tmp_path / ".out.tmp-dead"
    (stale / "float").mkdir(parents=True)
    (stale / "float" / "openvino_model.bin").write_bytes(b"\0" * 1000)
    (tmp_path / ".out.old-dead").mkdir()
    lock_path(target).write_text(str(dead_pid()))  # a lock file nobody holds: its run died
    (tmp_path / ".other.tmp-x").mkdir()  # another target's: not ours to remove
    with staging_dir(target) as tmp:
        assert leftovers(target) == [tmp]
    assert hidden(tmp_path) == [".other.tmp-x"]


def test_staging_of_a_live_run_is_kept_and_the_second_run_refuses(tmp_path, lock_holder):
    target = tmp_path / "out"
    live = tmp_path / ".out.tmp-live"
    live.mkdir()
    with pytest.raises(ExportError, match=rf"another optimum-wc run \(pid {lock_holder.pid}\) is writing .*out; "
                                          "wait for it to finish, or choose another output folder"):
        with staging_dir(target):
            pass
    assert live.is_dir() and lock_path(target).is_file() and not target.exists()


def test_second_export_to_the_same_target_refuses_and_the_first_completes(llama_dir, tmp_path):
    target = tmp_path / "out"
    first = cli("export", str(llama_dir), str(target), "--weight-format", "int8")
    wait_for(lambda: any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()), first)
    first.send_signal(signal.SIGSTOP)  # paused mid-export: the second run surely starts while the first holds the lock
    try:
        second = cli("export", str(llama_dir), str(target), "--weight-format", "int4", "--group-size", "32")
        _, err2 = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err1 = first.communicate(timeout=300)
    assert second.returncode == 1 and "another optimum-wc run (pid" in err2, err2
    assert first.returncode == 0, err1
    assert WeightCompressionConfig.from_json(target / "optimum_wc_config.json").mode.value.startswith("int8")
    assert hidden(tmp_path) == []


# --- full or read-only disk --------------------------------------------------------------------------------------


def old_target(target: Path) -> Path:
    target.mkdir()
    (target / "previous.txt").write_text("the previous export")
    return target


def assert_previous_survives(target: Path) -> None:
    assert sorted(os.listdir(target)) == ["previous.txt"]
    assert (target / "previous.txt").read_text() == "the previous export"
    assert hidden(target.parent) == []


def test_injected_disk_full_while_saving(llama_ir, tmp_path, monkeypatch):
    import optimum_wc.export.pipeline as pipeline
    from optimum_wc.export.pipeline import compress_ir_folder

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline, "copy_side_files", full)
    target = old_target(tmp_path / "out")
    config = WeightCompressionConfig(mode="int8_asym")
    needed = f"{folder_bytes(llama_ir.parent) / 2**20:.1f} MB"  # the float IR folder: the output is not larger
    with pytest.raises(ExportError, match=rf"no space left to write {target}: {tmp_path} has [0-9.]+ MB free and "
                                          rf"the run needs about {needed} \(it had written [0-9.]+ MB when the disk "
                                          r"filled\); free space there or choose another output folder"):
        compress_ir_folder(llama_ir.parent, target, config)
    assert_previous_survives(target)


def test_failed_rename_restores_the_previous_target(tmp_path, monkeypatch):
    target = old_target(tmp_path / "out")
    new = tmp_path / ".out.tmp-new"
    new.mkdir()
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == new:
            raise OSError(errno.EIO, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        move_into_place(new, target)
    assert sorted(os.listdir(target)) == ["previous.txt"]
    assert hidden(tmp_path) == [".out.tmp-new"]


@pytest.fixture()
def small_mount(tmp_path):
    """A mount point and a function mounting a tmpfs there (root only; unmounted after the test)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for p in mounted:
        subprocess.run(["umount", str(p)], check=False)


def test_real_disk_full_while_saving(llama_ir, small_mount):
    from optimum_wc.export.pipeline import compress_ir_folder

    disk = small_mount("size=256k")
    target = old_target(disk / "out")
    with pytest.raises(ExportError, match=rf"no space left to write {target}: {disk} has 0.[0-9] MB free and the run "
                                          r"needs about [0-9.]+ MB"):
        compress_ir_folder(llama_ir.parent, target, WeightCompressionConfig(mode="int8_asym"))
    assert_previous_survives(target)


def test_read_only_target(llama_ir, small_mount):
    from optimum_wc.export.pipeline import compress_ir_folder

    disk = small_mount("size=1m")
    old_target(disk / "out")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(ExportError, match=r"read-only; choose a writable output folder"):
        compress_ir_folder(llama_ir.parent, disk / "out", WeightCompressionConfig(mode="int8_asym"))
    assert_previous_survives(disk / "out")


def test_a_full_disk_while_writing_the_xml_never_deletes_the_discard_device(small_mount, tmp_path, monkeypatch):
    """OpenVINO's serializer deletes its .bin path when the XML write fails; ours goes through a symlink.

    Run as root with the device path itself, a full disk deleted /dev/null (found while these tests ran).
    Here a stand-in file plays /dev/null: it must survive, and no symlink is left beside the XML.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from optimum_wc.ir import serialize

    stand_in = tmp_path / "null"
    stand_in.write_bytes(b"")
    monkeypatch.setattr(serialize, "DISCARD", str(stand_in))
    x = ops.parameter([1, 4], np.float32)
    y = x
    for i in range(400):  # an XML far larger than the 4 KiB disk
        y = ops.add(y, ops.constant(np.ones((1, 4), np.float32)), name=f"a_long_layer_name_{i:04d}" * 4)
    model = ov.Model([ops.result(y)], [x])
    disk = small_mount("size=4k")
    with pytest.raises(RuntimeError):
        serialize.write_xml(model, disk / "openvino_model.xml", [], [])
    assert stand_in.is_file()
    assert not [p for p in disk.iterdir() if p.name.endswith(".discarded.bin")]
