"""slurm/label_rollouts.sh as array tasks (srun/scontrol stubs, Slurm's array variables set):
the task id is the shard whatever subset of tasks a submission holds; resubmitting tasks 1 and
3 of a 4-shard job relabels exactly those shards; merge refuses while any shard is unfinished;
USR1 (time limit near) requeues the task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nemo_erprm.errors import RunStateError
from nemo_erprm.jsonl import read_jsonl
from nemo_erprm.labeling.runner import merge_shards, shard_path, summary_path
from tests.training.test_slurm_script import fake_slurm_env

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "label_rollouts.sh"
NUM_PROBLEMS = 10


def offline_input(path: Path) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"What is {i} plus 1?", "gold": str(i + 1),
         "steps": [f"{i} plus 1 is {i + 1}.\n", f"#### {i + 1}"], "step_rewards": [[1, 0, 1, 1], [1]]}
        for i in range(NUM_PROBLEMS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_args(tmp_path: Path, out: Path) -> list[str]:
    """CONFIG.yaml and key=value overrides, as on the sbatch line."""
    config = tmp_path / "label.yaml"
    config.write_text("input: {format: offline, id_field: id}\nbackend: {name: offline}\n")
    return [str(config), f"input.path={offline_input(tmp_path / 'offline.jsonl')}", f"output.dir={out}"]


def array_task(tmp_path: Path, out: Path, task: int, tasks: list[int], **env_vars: str) -> subprocess.CompletedProcess:
    """One task of `sbatch --array=<tasks>`, as Slurm starts it."""
    env = fake_slurm_env(tmp_path)
    env.update(SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN=str(min(tasks)),
               SLURM_ARRAY_TASK_MAX=str(max(tasks)), SLURM_ARRAY_TASK_COUNT=str(len(tasks)), **env_vars)
    return subprocess.run(["bash", str(SCRIPT), *config_args(tmp_path, out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def interrupt(out: Path, shard: int, num_shards: int) -> None:
    """What a task killed mid-shard leaves: its last problem's record cut, no summary."""
    summary_path(out, shard, num_shards).unlink()
    path = shard_path(out, shard, num_shards)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])


def test_resubmitting_tasks_1_and_3_relabels_exactly_those_shards(tmp_path):
    out = tmp_path / "out"
    for task in range(4):  # sbatch --array=0-3
        proc = array_task(tmp_path, out, task, [0, 1, 2, 3])
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert merge_shards(out)[1] == NUM_PROBLEMS
    for shard in (1, 3):
        interrupt(out, shard, 4)
    with pytest.raises(RunStateError, match=r"2 of 4 shards are not complete \(shard 1: .*; shard 3: "):
        merge_shards(out)

    untouched = {s: shard_path(out, s, 4).stat().st_mtime_ns for s in (0, 2)}
    for task in (1, 3):  # ERPRM_NUM_SHARDS=4 sbatch --array=1,3
        proc = array_task(tmp_path, out, task, [1, 3], ERPRM_NUM_SHARDS="4")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"shard {task} of 4" in proc.stdout
        launched = (tmp_path / "srun.args").read_text().splitlines()
        assert launched[launched.index("--shard"):launched.index("--shard") + 4] == [
            "--shard", str(task), "--num-shards", "4"]
    assert {s: shard_path(out, s, 4).stat().st_mtime_ns for s in (0, 2)} == untouched
    assert sorted(p.name for p in out.glob("records.shard-*")) == [shard_path(out, s, 4).name for s in range(4)]
    merged, n = merge_shards(out)
    assert n == NUM_PROBLEMS
    assert [r["problem_id"] for r in read_jsonl(merged)] == [f"q{i}" for i in range(NUM_PROBLEMS)]


def test_a_partial_array_without_the_shard_count_is_refused(tmp_path):
    proc = array_task(tmp_path, tmp_path / "out", 3, [1, 3])
    assert proc.returncode == 2 and "ERPRM_NUM_SHARDS" in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_task_with_another_shard_count_is_refused(tmp_path):
    out = tmp_path / "out"
    assert array_task(tmp_path, out, 0, [0, 1, 2, 3]).returncode == 0
    proc = array_task(tmp_path, out, 1, [0, 1, 2])  # e.g. --array=0-2 resubmitted without the count
    assert proc.returncode != 0 and "holds shards of a 4-shard split" in proc.stderr, proc.stderr[-2000:]


SLOW_SRUN = """#!/bin/bash
echo $$ > "$FAKE_SLURM_LOG/step.pid"
exec sleep 60
"""


def test_usr1_requeues_the_array_task(tmp_path):
    env = fake_slurm_env(tmp_path, srun=SLOW_SRUN)
    env.update(SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="3", SLURM_ARRAY_TASK_COUNT="4")
    job = subprocess.Popen(["bash", str(SCRIPT), *config_args(tmp_path, tmp_path / "out")], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "step.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what Slurm sends the batch shell before the time limit
    time.sleep(0.5)
    os.kill(int((tmp_path / "step.pid").read_text()), signal.SIGTERM)  # the step, as Slurm's requeue stops it
    output, _ = job.communicate(timeout=60)
    assert job.returncode == 0, output
    assert "requeue 4242" in (tmp_path / "scontrol.calls").read_text()
