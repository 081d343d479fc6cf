"""One launch per training run folder (issue 22: two launches on one run folder both trained, to
`step=179-last` and `step=179-last-v1`, or the second crashed with `No such file or directory`).

A 2-rank torchrun launch of `python -m nemo_erprm.train` (conf/tiny_cpu.yaml: committed data,
random init) holds `run.lock` through its global rank 0, so its rank 1 trains as before; a
second launch on the same folder while it runs is refused with exit 2 and one line naming the
holder. The lock file goes with the launch that held it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.training.conftest import train_cmd

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_second_launch_on_a_running_folder_is_refused(tmp_path):
    out = tmp_path / "train"
    run_dir, lock = out / "tiny_cpu", out / "tiny_cpu" / "run.lock"
    metrics = run_dir / "metrics.jsonl"
    # more steps than the test waits for: SIGTERM ends the first launch once the second is refused
    over = [f"run.output_dir={out}", "trainer.max_steps=1000", "trainer.val_check_interval=1000",
            "trainer.checkpoint_every_n_steps=1000", "logging.tensorboard=false"]
    first = subprocess.Popen(train_cmd(2) + over, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_for(condition, what: str) -> None:
        deadline = time.time() + 600
        while not condition():
            assert first.poll() is None, f"the first launch ended (exit {first.returncode}) before {what}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    try:
        wait_for(lock.exists, "it took the lock")
        holder = json.loads(lock.read_text())
        second = subprocess.run(train_cmd() + over, cwd=REPO, capture_output=True, text=True, timeout=600)
        wait_for(lambda: metrics.exists() and metrics.read_text().strip(), "its first step")
        os.kill(holder["pid"], signal.SIGTERM)  # rank 0: checkpoint, and the launch stops (NeMo broadcasts it)
        output, _ = first.communicate(timeout=600)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-3000:]
    [line] = [x for x in second.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: run folder {run_dir}: in use by another run, "
                           f"pid {holder['pid']} on {socket.gethostname()}"), line
    assert "Traceback" not in second.stderr
    assert holder["pid"] != first.pid  # held by rank 0, not by the torchrun agent

    # rank 1 trained beside the lock its rank 0 held; the launch stopped cleanly and released it
    assert first.returncode == 0, output[-6000:]
    assert "SIGTERM received: writing a checkpoint at step" in output
    assert not lock.exists()
