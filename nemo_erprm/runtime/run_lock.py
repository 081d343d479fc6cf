"""One run per output folder: an exclusive lock file, held while a run writes there.

Two runs on one folder each append what they produce (labeling wrote every record twice, the
Best-of-N score cache held every key twice, two trainings raced on the same checkpoints). A run
takes ``<folder>/<name>.lock`` before it writes anything and removes it when it ends; a second
run is refused with one line naming the folder and the holder (pid, host, start, command).

How the lock is taken, and how a lock left by a crash is told apart from a live one:

- **Exclusion**: the file is created whole and atomically (a complete temporary file hard-linked
  into place, which fails if the name exists; atomic on local disks, NFS v3+ and Lustre, where
  the server decides), so of two runs, on one machine or on two, exactly one creates it.
- **Liveness on one machine**: the creator holds ``flock`` on the file for the whole run. The
  kernel drops that lock when the process ends, however it ends (SIGKILL and the OOM killer
  included), so a lock whose ``flock`` is free and whose holder ran on this machine (same host
  name and boot id) was left by a crash and is taken over. Where ``flock`` is not available
  the holder's pid is looked up instead (with its start time, so a reused pid does not count).
- **Shared filesystems**: ``flock`` may be node-local (Lustre ``localflock``, NFS mounted with
  ``nolock`` or ``local_lock=flock``, BeeGFS without global locks) or missing (Lustre
  ``noflock``: ENOSYS), so a free ``flock`` says nothing about a holder on another node. Such
  a lock is taken over only when (a) Slurm requeued the same job (same ``SLURM_JOB_ID``, other
  ``SLURM_RESTART_COUNT``: Slurm ends a job before requeueing it), or (b) its heartbeat — the
  file's mtime, which the holder touches every 30 s — is older than 10 minutes. Otherwise the
  run is refused with a line saying that the holder cannot be checked from this host, and which
  file to delete if that run has ended.

Multi-process launches (torchrun, srun) take one lock per launch, in one process: the caller
decides which (training: global rank 0). Processes forked by the holder (data loader workers,
checkpoint writers) close their inherited copy, so they cannot keep a dead holder's lock alive.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nemo_erprm.errors import RunStateError

HEARTBEAT_S = 30.0  # the holder touches its lock file this often
STALE_AFTER_S = 600.0  # a lock from another host without a heartbeat for this long is taken over
_FLOCK_UNAVAILABLE = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_held: "set[RunLock]" = set()


class RunLockedError(RunStateError):
    """Another run holds the lock of this output folder."""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _command_line() -> str:
    argv = list(getattr(sys, "orig_argv", sys.argv)) or ["?"]
    return shlex.join([os.path.basename(argv[0]), *argv[1:]])[:300]


def this_process() -> dict[str, Any]:
    """Who holds a lock: written into the lock file, shown when another run is refused."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _read("/proc/sys/kernel/random/boot_id"),
        "pid_ns": _pid_namespace(),
        "pid_start": _process_start(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": _command_line(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
    }


def _flock(fd: int) -> str:
    """``acquired``, ``held`` (another open file holds it) or ``unavailable`` (filesystem)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "acquired"
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return "held"
        if e.errno in _FLOCK_UNAVAILABLE:
            return "unavailable"
        raise


def _process_alive(pid: Any, start: Optional[int]) -> bool:
    if not isinstance(pid, int) or pid <= 0:  # kill(0 or -1, ...) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    now = _process_start(pid)
    return start is None or now is None or now == start


def _describe(holder: Optional[dict[str, Any]]) -> str:
    if not holder:
        return "a run that is still writing its lock file"
    command = " ".join(str(holder.get("command", "")).split())  # one line, whatever the argv held
    command = command if len(command) <= 120 else command[:117] + "..."
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: {command})"


@dataclass
class _Verdict:
    stale: bool
    why: str = ""  # stale: why it may be taken over; live: why the run is refused
    checkable: bool = True  # False: the holder could not be checked from this host


def judge(holder: Optional[dict[str, Any]], flock: str, age_s: float, me: dict[str, Any]) -> _Verdict:
    """Whether the lock described by ``holder`` (its ``flock`` state as seen from here, its
    heartbeat ``age_s``) was left by a run that has ended."""
    if holder is None:  # only while a holder without hard links writes the file
        return _Verdict(age_s > STALE_AFTER_S, f"an unreadable lock file, untouched for {age_s / 60:.0f} min")
    same_kernel = holder.get("host") == me["host"] and holder.get("boot_id") == me["boot_id"]
    if same_kernel:
        if flock == "acquired" and holder.get("flock"):
            return _Verdict(True, "that process has ended")
        if holder.get("pid_ns") == me["pid_ns"]:
            alive = _process_alive(holder.get("pid"), holder.get("pid_start"))
            return _Verdict(not alive, "that process has ended" if not alive else "")
    job = holder.get("slurm_job")
    if job and job == me["slurm_job"] and holder.get("slurm_restart") != me["slurm_restart"]:
        return _Verdict(True, f"Slurm job {job} was requeued since")
    if age_s > STALE_AFTER_S:
        return _Verdict(True, f"no heartbeat for {age_s / 60:.0f} min")
    return _Verdict(False, f"heartbeat {age_s:.0f} s ago", checkable=False)


class RunLock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) removes it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd, self._pid = path, fd, os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"heartbeat {path.name}", daemon=True)
        self._thread.start()
        _held.add(self)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
            except OSError:
                pass  # a missed beat only makes the lock look older to other hosts

    def release(self) -> None:
        """Remove the lock file (unless another run took it over meanwhile) and drop the lock."""
        if self._fd < 0 or os.getpid() != self._pid:
            return
        self._stop.set()
        try:
            mine = os.fstat(self._fd)
            now = os.stat(self.path)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(self.path)  # before closing: no one sees our file with its flock free
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = -1
            _held.discard(self)

    def _forget_in_child(self) -> None:
        """A forked child must neither keep the lock alive after its parent died nor remove it."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _after_fork_in_child() -> None:
    for lock in list(_held):
        lock._forget_in_child()
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _create(path: Path, holder: dict[str, Any]) -> Optional[int]:
    """The fd of a new lock file at ``path`` (flock held, holder written), or None if it exists."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        text = json.dumps({**holder, "flock": _flock(fd) == "acquired"}) + "\n"
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if os.fstat(fd).st_nlink < 2:  # NFS: a retransmitted LINK may report EEXIST for its own success
                os.close(fd)
                return None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            # a filesystem without hard links: exclusive create, then write (a reader may find
            # it empty for that instant and treats it as held)
            os.close(fd)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                return None
            text = json.dumps({**holder, "flock": _flock(fd) == "acquired"}) + "\n"
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        return fd
    except BaseException:
        os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _take_over_if_stale(path: Path, what: str, me: dict[str, Any]) -> None:
    """Raise :class:`RunLockedError` when the lock at ``path`` belongs to a live (or uncheckable)
    run; else remove it, so the caller can create its own."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # released meanwhile
    try:
        seen = os.fstat(fd)
        flock = _flock(fd)  # while we hold it, a concurrent taker sees it held and backs off
        try:
            holder = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
        except ValueError:
            holder = None
        holder = holder if isinstance(holder, dict) else None
        if flock == "held":
            raise RunLockedError(f"{what}: in use by another run, {_describe(holder)}; "
                                 f"wait for it to end or choose another output folder")
        verdict = judge(holder, flock, time.time() - seen.st_mtime, me)
        if not verdict.stale and verdict.checkable:
            raise RunLockedError(f"{what}: in use by another run, {_describe(holder)}; "
                                 f"wait for it to end or choose another output folder")
        if not verdict.stale:
            raise RunLockedError(
                f"{what}: locked by {_describe(holder)}, {verdict.why}, which cannot be checked from "
                f"{me['host']}; if that run has ended, delete {path} (or wait until its heartbeat is "
                f"{STALE_AFTER_S / 60:.0f} min old)")
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):
                os.unlink(path)
        except FileNotFoundError:
            pass
        print(f"note: {what}: took over the lock left by {_describe(holder)}: {verdict.why}", file=sys.stderr)
    finally:
        os.close(fd)


def acquire_run_lock(folder: str | os.PathLike, name: str = "run", what: Optional[str] = None) -> RunLock:
    """Take ``folder/<name>.lock`` (creating ``folder``) for this process, or raise
    :class:`RunLockedError` naming the holder. ``what`` names the locked thing in messages."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lock"
    what = what or str(folder)
    me = this_process()
    for _ in range(5):
        fd = _create(path, me)
        if fd is not None:
            return RunLock(path, fd)
        _take_over_if_stale(path, what, me)
    raise RunLockedError(f"{what}: {path} keeps changing hands; another run is starting there, retry later")
