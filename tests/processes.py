"""Helpers for tests that drive real processes side by side."""

from __future__ import annotations

import subprocess
import time
from typing import Callable


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 300,
               poll: float = 0.02) -> None:
    """Wait for ``condition`` while ``proc`` runs; fail if it ends first or time runs out."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
