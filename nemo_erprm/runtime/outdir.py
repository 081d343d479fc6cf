"""Output folders that appear whole or not at all.

A tool writes into ``.NAME.tmp-PID-XXXX`` beside the target and renames it into place at the
end. An existing target is refused unless the caller allows overwriting; then the new folder
is swapped in with one ``renameat2(RENAME_EXCHANGE)`` (Linux), so a process killed at any
moment leaves either the old folder or the new one at the target path, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from pathlib import Path
from typing import Iterator

from nemo_erprm.errors import ConfigError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def check_output_dir(path: str | Path, flag: str, overwrite: bool | None) -> Path:
    """Fail early (before any heavy import) when ``path`` cannot become an output folder.
    ``overwrite=None``: the tool has no --overwrite, an existing non-empty folder is refused."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        fix = "pass --overwrite" if overwrite is False else "delete it"
        raise ConfigError(f"{flag} {out}: already exists and is not empty; choose another {flag} or {fix}")
    parent = out.resolve().parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{flag} {out}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK):
                raise ConfigError(f"{flag} {out}: {p} is not writable")
            break
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporary folders of ``out`` left by killed processes (their pid is gone)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where renameat2 is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: filesystem without exchange
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _fsync_tree(root: Path) -> None:
    for f in sorted(root.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def normalize_modes(root: Path) -> None:
    """Files 0644, folders 0755 (some writers create 0600 files), minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o755 if p.is_dir() else 0o644) & ~umask)


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one step.

    On an exception the temporary folder is removed and ``path`` is left as it was."""
    out = Path(path)
    check_output_dir(out, "--out", overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir()
    try:
        yield tmp
        normalize_modes(tmp)
        _fsync_tree(tmp)
        if out.exists():
            check_output_dir(out, "--out", overwrite)  # it may have appeared meanwhile
            if not _exchange(tmp, out):
                # no atomic exchange: the old folder moves aside for the instant of one rename
                aside = out.parent / f".{out.name}.tmp-{os.getpid()}-old"
                os.rename(out, aside)
                os.rename(tmp, out)
                tmp = aside
        else:
            os.rename(tmp, out)
            tmp = None  # type: ignore[assignment]
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
