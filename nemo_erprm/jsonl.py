"""JSONL reading with file:line errors, and crash-safe appends.

Every stage boundary of nemo-erprm is a JSONL file. Readers name the file and line of
the first bad record (and the byte offset of a byte that is not UTF-8); writers append whole
lines with one ``write`` and flush + fsync, so a process killed at any moment leaves at most
one partial last line, which :func:`repair_partial_tail` removes on restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from nemo_erprm.errors import ERPRMError


class RecordError(ERPRMError, ValueError):
    """A record at a stage boundary is malformed; the message names file and line."""

    def __init__(self, path: str | os.PathLike, line: int, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}")


def not_utf8(byte: int, offset: int) -> str:
    """The message for a byte that is not UTF-8, at ``offset`` bytes into its source."""
    return f"not UTF-8 (byte offset {offset}: 0x{byte:02x}); save the file as UTF-8"


def utf8_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file; a byte that is not UTF-8 raises
    :class:`RecordError` naming its line and byte offset in the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(path, lineno, not_utf8(raw[e.start], offset + e.start)) from None
            yield lineno, text
            offset += len(raw)


def check_utf8(path: str | os.PathLike) -> None:
    """Read ``path`` through once (a stage that writes before it reads checks its inputs first)."""
    for _ in utf8_lines(path):
        pass


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; 1-based line numbers."""
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise RecordError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def dumps_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def repair_partial_tail(path: str | os.PathLike) -> int:
    """Cut a trailing line without newline (a write interrupted by a kill). Returns bytes cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        pos, block = size, 1 << 16
        while pos > 0:
            step = min(block, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos - step + nl + 1
                break
            pos -= step
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


class JsonlAppender:
    """Append groups of records atomically enough for a SIGKILL: one write, then fsync."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        data = "".join(dumps_line(r) for r in records).encode("utf-8")
        if not data:
            return
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write a whole file via a temporary file and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(dumps_line(r))
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def create_file_once(path: str | os.PathLike, text: str) -> str:
    """Create ``path`` with ``text`` unless it exists; return the file's content either way.

    Safe when several processes race to create the same file (the tasks of a Slurm array
    starting together): each writes its own temporary file and hard-links it into place, which
    fails atomically if another process got there first, so the file is never half-written and
    never replaced.
    """
    path = Path(path)
    if path.exists():
        return path.read_text(encoding="utf-8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text(encoding="utf-8")
        except OSError:  # a filesystem without hard links: rename (equal contents race harmlessly)
            if not path.exists():
                os.replace(tmp, path)
            return path.read_text(encoding="utf-8")
        return text
    finally:
        tmp.unlink(missing_ok=True)
