"""The output-folder lock (nemo_erprm.runtime.run_lock) between real processes: a live holder
refuses a second taker with one line naming it; a holder killed with SIGKILL leaves a lock
file that the next taker takes over (the kernel released its flock; without flock, its pid is
gone); a forked child does not keep a killed holder's lock; a holder on another host is judged
by Slurm's requeue count and by its heartbeat, and refused with a line saying so otherwise.
The tools' own two-process tests are in tests/labeling, tests/eval and tests/training."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_erprm.runtime import run_lock
from nemo_erprm.runtime.run_lock import RunLockedError, acquire_run_lock

REPO = Path(__file__).resolve().parents[2]

# A process that takes the lock and keeps it; "noflock": flock fails as on Lustre mounted
# `noflock` (ENOSYS); "fork": it forks a child that outlives it.
HOLDER = r"""
import errno, fcntl, os, sys, time
if "noflock" in sys.argv:
    def flock(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")
    fcntl.flock = flock
from nemo_erprm.runtime.run_lock import acquire_run_lock
lock = acquire_run_lock(sys.argv[1], "run")
child = os.fork() if "fork" in sys.argv else -1
if child == 0:
    time.sleep(300)
    os._exit(0)
print("held", child, flush=True)
time.sleep(300)
"""


def start_holder(folder: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), *flags], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "held", "the holder did not take the lock"
    return proc, int(line[1])


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(30)


def no_flock(monkeypatch) -> None:
    def flock(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)


@pytest.mark.parametrize("flock", ["flock", "noflock"])
def test_live_holder_refuses_and_a_killed_one_is_taken_over(tmp_path, capsys, monkeypatch, flock):
    folder = tmp_path / "out"
    if flock == "noflock":
        no_flock(monkeypatch)
    holder, _ = start_holder(folder, flock)
    try:
        with pytest.raises(RunLockedError) as refused:
            acquire_run_lock(folder, "run")
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"{folder}: in use by another run")
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
    finally:
        kill(holder)
    assert (folder / "run.lock").exists()  # SIGKILL leaves the file behind
    with acquire_run_lock(folder, "run") as lock:
        assert f"took over the lock left by pid {holder.pid}" in capsys.readouterr().err
        held = json.loads(lock.path.read_text())
        assert held["pid"] == os.getpid() and held["flock"] is (flock == "flock")
    assert not (folder / "run.lock").exists()  # released: the folder is as before


def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path):
    """Forked helpers (data loader workers, checkpoint writers) inherit the lock's file; the lock
    must still end with the process that took it."""
    folder = tmp_path / "out"
    holder, child = start_holder(folder, "fork")
    try:
        kill(holder)
        os.kill(child, 0)  # the child still runs
        with acquire_run_lock(folder, "run"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def write_foreign_lock(folder: Path, age_s: float, **holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.lock"
    info = {"pid": 4242, "host": "node7.cluster", "boot_id": "other-boot", "pid_ns": "pid:[1]", "pid_start": 1,
            "started": "2025-01-01 00:00:00", "command": "python -m nemo_erprm.train", "slurm_job": None,
            "slurm_restart": "0", "flock": True, **holder}
    path.write_text(json.dumps(info) + "\n")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_holder_on_another_host_with_a_fresh_heartbeat_cannot_be_checked(tmp_path):
    path = write_foreign_lock(tmp_path / "out", age_s=40)
    with pytest.raises(RunLockedError) as refused:
        acquire_run_lock(tmp_path / "out", "run")
    message = str(refused.value)
    assert "pid 4242 on node7.cluster" in message and "heartbeat 40 s ago" in message
    assert f"cannot be checked from {socket.gethostname()}" in message and f"delete {path}" in message
    assert path.exists()


def test_a_holder_on_another_host_without_heartbeat_is_taken_over(tmp_path, capsys):
    write_foreign_lock(tmp_path / "out", age_s=run_lock.STALE_AFTER_S + 60)
    with acquire_run_lock(tmp_path / "out", "run"):
        assert "took over the lock left by pid 4242 on node7.cluster" in capsys.readouterr().err


def test_a_requeued_slurm_job_takes_over_its_earlier_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    write_foreign_lock(tmp_path / "out", age_s=5, slurm_job="77", slurm_restart="0")
    with pytest.raises(RunLockedError):  # the same incarnation of job 77, on another node: alive
        acquire_run_lock(tmp_path / "out", "run")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # Slurm requeued the job: its earlier run has ended
    with acquire_run_lock(tmp_path / "out", "run"):
        assert "Slurm job 77 was requeued since" in capsys.readouterr().err


def test_the_holder_keeps_its_heartbeat_and_releases_only_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    lock = acquire_run_lock(tmp_path / "out", "run")
    os.utime(lock.path, (0, 0))
    deadline = time.time() + 10
    while lock.path.stat().st_mtime < time.time() - 60 and time.time() < deadline:
        time.sleep(0.05)
    assert lock.path.stat().st_mtime > time.time() - 60  # touched again
    lock.path.unlink()  # as if another host had taken the lock over
    lock.path.write_text("{}\n")
    lock.release()
    assert lock.path.read_text() == "{}\n"
