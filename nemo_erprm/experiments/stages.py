"""The stage runner shared by the demo and the experiments.

A pipeline is a list of stages; each stage is one command a user could run (a tool of this
project), an output path and the settings that determine its result. A finished stage
records its settings in ``<out>/.stages/<name>.json``; a rerun reuses it while the settings
are unchanged and its result is still there, and otherwise deletes the partial output and
runs it again. So a killed pipeline resumes at the stage it was in, and a changed setting
reruns exactly the stages it feeds (their settings include the digests of their inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's sha256."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def printable(cmd: Sequence[Any]) -> str:
    return " ".join(str(c) for c in cmd).replace(sys.executable, "python")


class StageError(RuntimeError):
    """A stage's command failed or did not produce its result."""


class Stages:
    """Runs stages, times them, and reuses a finished one while its settings are unchanged.

    ``log_dir``: when set, each stage's stdout/stderr go to ``<log_dir>/<name>.log`` and the
    console gets one line per stage (the log's tail is printed if the stage fails).
    """

    def __init__(self, out: Path, show_estimates: bool = True, log_dir: Optional[Path] = None):
        self.out, self.show_estimates, self.log_dir = Path(out), show_estimates, log_dir
        self.times: dict[str, float] = {}
        self.reused: list[str] = []
        (self.out / ".stages").mkdir(parents=True, exist_ok=True)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def _key_file(self, name: str) -> Path:
        return self.out / ".stages" / f"{name}.json"

    def done(self, name: str, settings: dict[str, Any], produced: Callable[[], bool]) -> bool:
        f = self._key_file(name)
        if not f.exists():
            return False
        recorded = json.loads(f.read_text())
        return recorded.get("settings", recorded) == settings and produced()

    def recorded_seconds(self, name: str) -> Optional[float]:
        """Wall time of the run that produced a reused stage (None if never recorded)."""
        f = self._key_file(name)
        return json.loads(f.read_text()).get("seconds") if f.exists() else None

    def run(self, name: str, settings: dict[str, Any], cmd: Sequence[Any], output: Optional[Path],
            estimate_s: float, produced: Callable[[], bool], env: Optional[dict[str, str]] = None) -> bool:
        """Run (or reuse) one stage; returns True when it ran. ``produced()``: whether the
        stage's result is there (checked before reuse and after a run)."""
        if self.done(name, settings, produced):
            print(f"=== {name}: reusing finished outputs ({output})", flush=True)
            self.times[name] = 0.0
            self.reused.append(name)
            return False
        self._key_file(name).unlink(missing_ok=True)
        if output is not None and output.exists():
            # other settings, or an interrupted run of this stage: redo it
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        eta = f" (about {estimate_s / 60:.1f} min on 2 CPU cores)" if self.show_estimates and estimate_s else ""
        print(f"\n=== {name}{eta}: {printable(cmd)}", flush=True)
        start = time.time()
        full_env = None if env is None else {**os.environ, **env}
        if self.log_dir is None:
            rc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=full_env).returncode
            log = None
        else:
            log = self.log_dir / f"{name.replace('/', '_').replace(' ', '_')}.log"
            with log.open("w") as f:
                rc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=full_env, stdout=f,
                                    stderr=subprocess.STDOUT).returncode
        self.times[name] = time.time() - start
        if rc != 0 or not produced():
            tail = ""
            if log is not None and log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                tail = f"\n--- last lines of {log}:\n{tail}"
            why = f"exit code {rc}" if rc != 0 else f"finished without its result in {output}"
            raise StageError(f"stage {name} failed ({why}){tail}")
        self._key_file(name).write_text(json.dumps({"settings": settings, "seconds": self.times[name]}))
        print(f"=== {name} done in {self.times[name]:.1f}s", flush=True)
        return True
