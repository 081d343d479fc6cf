"""Quiet consoles: third-party warnings and log lines go to a log file, not to the terminal.

A 2-step training run printed 266 lines, 22 of them warnings about things the user cannot
change here (Apex/TE missing, NeMo's optional modules, OneLogger, pynvml). With
:func:`quiet_third_party` installed, the console shows the run's own lines (``print`` and the
``nemo_erprm`` loggers) and errors; every Python warning and every log record below ERROR
from another library goes to the log file instead. ``--verbose`` or ``ERPRM_VERBOSE=1``
leaves everything on the console, as before.

Where the records go: :func:`set_log_file` (the run's log file, e.g. the training run folder's
``logs/library.rank0.log``); until it is called they are held in memory and written there
when it is. A command that ends before naming a file (``--help``, a bad argument) drops them,
or writes them to ``$ERPRM_LOG_DIR`` when set. At exit one line says how many were hidden
and where they are.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, TextIO

VERBOSE_ENV = "ERPRM_VERBOSE"
OWN_LOGGERS = ("nemo_erprm", "__main__")

_state: dict = {"installed": False, "file": None, "held": [], "tool": "erprm", "count": 0}
_original_emit = logging.StreamHandler.emit
_original_showwarning = warnings.showwarning


def verbose_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _write(text: str) -> None:
    _state["count"] += 1
    handle: Optional[TextIO] = _state["file"]
    if handle is None:
        _state["held"].append(text)
    else:
        handle.write(text if text.endswith("\n") else text + "\n")
        handle.flush()


def _is_console(stream: object) -> bool:
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def _emit(handler: logging.StreamHandler, record: logging.LogRecord) -> None:
    own = record.name.startswith(OWN_LOGGERS)
    if own or record.levelno >= logging.ERROR or not _is_console(getattr(handler, "stream", None)):
        _original_emit(handler, record)
        return
    try:
        _write(f"{time.strftime('%H:%M:%S')} {record.levelname} {record.name}: {handler.format(record)}")
    except Exception:  # a formatting error of another library's record must not end the run
        pass


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    _write(f"{time.strftime('%H:%M:%S')} {warnings.formatwarning(message, category, filename, lineno, line)}")


def quiet_third_party(tool: str, verbose: bool = False) -> bool:
    """Send other libraries' warnings and sub-ERROR log records to the log file. Idempotent;
    returns whether filtering is on (off with ``verbose`` or ``ERPRM_VERBOSE=1``)."""
    if verbose_requested(verbose):
        os.environ[VERBOSE_ENV] = "1"  # child processes (export after training) stay verbose too
        _uninstall()
        return False
    _state["tool"] = tool
    if _state["installed"]:
        return True
    _state["installed"] = True
    # processes spawned by libraries (checkpoint writers) start without this filter: the one
    # warning each prints on importing torch is ignored there
    # warnings and progress bars repeat what the parent logged (megatron's Apex/TE notices, pynvml)
    prior = os.environ.get("PYTHONWARNINGS")
    rules = "ignore:The pynvml package is deprecated:FutureWarning,ignore::UserWarning"
    os.environ["PYTHONWARNINGS"] = f"{prior},{rules}" if prior else rules
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # tokenize/filter bars of a few rows
    logging.StreamHandler.emit = _emit  # type: ignore[method-assign]  # handlers libraries create later too
    warnings.showwarning = _showwarning
    atexit.register(_flush_held)
    return True


def _uninstall() -> None:
    """Back to plain consoles (``--verbose`` parsed after an early install): what was held so
    far is printed now."""
    if not _state["installed"]:
        return
    logging.StreamHandler.emit = _original_emit  # type: ignore[method-assign]
    warnings.showwarning = _original_showwarning
    _state["installed"] = False
    for text in _state["held"]:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
    _state["held"].clear()
    _state["count"] = 0


def quiet_module_cli() -> None:
    """For ``python -m nemo_erprm.<tool>``: filter from the package's import on, so the
    warnings megatron and NeMo print while the tool's module imports are caught too
    (the tool's own ``--verbose`` undoes it)."""
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        if module.startswith("nemo_erprm.") and not verbose_requested("--verbose" in argv):
            quiet_third_party(module.rsplit(".", 1)[-1])


def set_log_file(path: str | Path) -> Optional[Path]:
    """Write filtered records to ``path`` from now on (appending), including those held so far."""
    if not _state["installed"]:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _state["file"] is not None:
        _state["file"].close()
    _state["file"] = open(path, "a", encoding="utf-8")
    _state["path"] = path
    for text in _state["held"]:
        _state["file"].write(text if text.endswith("\n") else text + "\n")
    _state["held"].clear()
    _state["file"].flush()
    return path


def _flush_held() -> None:
    if _state["file"] is None and _state["held"] and os.environ.get("ERPRM_LOG_DIR"):
        folder = Path(os.environ["ERPRM_LOG_DIR"])
        path = folder / f"{_state['tool']}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        try:
            set_log_file(path)
        except OSError:
            return
    if _state["file"] is not None:
        _state["file"].flush()
        if _state["count"]:
            print(f"({_state['count']} library warnings/log lines hidden: {_state['path']}; "
                  f"{VERBOSE_ENV}=1 or --verbose shows them)", file=sys.stderr)


def hide_progress_bars() -> None:
    """``--no-progress``: no library's progress bar either. transformers' GGUF loader (the
    embedded SmolLM2) draws a plain tqdm bar, which reads ``TQDM_DISABLE`` when tqdm is first
    imported: call this before anything imports tqdm. Child processes inherit it."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

