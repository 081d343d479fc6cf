"""The sbatch scripts on a real single-node Slurm cluster (slurm/local_cluster.sh: slurmctld,
slurmd and munge on loopback, installed with apt when missing): a 2-task labeling array merged
equals one process; training completes; USR1 (the time-limit warning) checkpoints, requeues
and resumes to the uninterrupted losses; after a SIGKILL a resubmitted job resumes from the
last checkpoint. GPU flags are overridden on the sbatch line, as on any CPU cluster."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_erprm.jsonl import read_jsonl
from tests.training.conftest import assert_resumed_equals_reference, metrics, overrides

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CPU_FLAGS = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=2"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm_state")
    env = {**os.environ, "ERPRM_SLURM_DIR": str(state), "ERPRM_PYTHON": sys.executable,
           "ERPRM_LOG_ROOT": str(state / "logs")}
    proc = subprocess.run(["bash", "slurm/local_cluster.sh", "up"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"no local Slurm cluster: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run(["bash", "slurm/local_cluster.sh", "down"], cwd=REPO, env=env, capture_output=True)


def sbatch(env, args, wait=False) -> str:
    cmd = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + args
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr + job_logs(args)
    return proc.stdout.strip().split(";")[0]


def job_logs(args) -> str:
    """The tails of the job's --output files, so a failed job explains itself in the test report."""
    pattern = next((a.split("=", 1)[1] for a in args if a.startswith("--output=")), None)
    if pattern is None:
        return ""
    for key in ("%A", "%a", "%j", "%x"):
        pattern = pattern.replace(key, "*")
    return tails(sorted(Path(pattern).parent.glob(Path(pattern).name)))


def tails(files, lines: int = 30) -> str:
    """The last lines of each file, headed by its path, for assertion messages."""
    return "".join(f"\n--- {f}:\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) for f in files)


def job_state(env, job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "GONE")


def in_queue(env, job: str) -> bool:
    """Pending, running or completing (squeue lists a job until all its processes are gone)."""
    return bool(subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip())


def wait_for(predicate, timeout=600, what="condition", poll=0.5, explain=lambda: ""):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}{explain()}")


def rank_log_files(env, job: str) -> list[Path]:
    """Each rank's log of the job (slurm/train_erprm.sh writes them in a folder per job)."""
    return sorted(Path(env["ERPRM_LOG_ROOT"]).glob(f"*-{job}/rank-*.log"))


def test_label_array_merged_equals_one_process(slurm, shared_data, tiny_lm_dir, tmp_path):
    common = ["--config", "conf/demo/label.yaml", f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}",
              "input.limit=4", f"backend.model={tiny_lm_dir}", "sampling.n=2", "sampling.max_new_tokens=16"]
    out = tmp_path / "array"
    sbatch(slurm, ["--array=0-1", "--cpus-per-task=1", "--gpus-per-node=0", f"--output={tmp_path}/label-%A_%a.out",
                   "slurm/label_rollouts.sh", *common[1:], f"output.dir={out}"], wait=True)
    subprocess.run([sys.executable, "tools/label_rollouts.py", "merge", "--dir", str(out)], cwd=REPO, check=True,
                   capture_output=True)
    single = tmp_path / "single"
    subprocess.run([sys.executable, "tools/label_rollouts.py", *common, f"output.dir={single}", "--no-progress"],
                   cwd=REPO, check=True, capture_output=True)
    merged = sorted(read_jsonl(out / "records.jsonl"), key=lambda r: r["id"])
    alone = sorted(read_jsonl(single / "records.shard-00000-of-00001.jsonl"), key=lambda r: r["id"])
    assert len(merged) == 4 and merged == alone


def train_job(setup, out, tmp_path, extra=()):
    return CPU_FLAGS + [f"--output={tmp_path}/train-%j.out", "slurm/train_erprm.sh", "conf/tiny_cpu.yaml",
                        *overrides(setup, out, **dict(extra))]


def test_train_job_completes(slurm, setup, reference, tmp_path):
    out = tmp_path / "run"
    job = sbatch(slurm, train_job(setup, out, tmp_path), wait=True)
    assert_resumed_equals_reference(reference, out)
    log = (tmp_path / f"train-{job}.out").read_text()
    assert "training step exited with status 0" in log


def test_time_limit_signal_checkpoints_requeues_and_resumes(slurm, setup, reference, tmp_path):
    out = tmp_path / "run"
    job = sbatch(slurm, train_job(setup, out, tmp_path))
    log = out / "tiny_cpu" / "metrics.jsonl"
    # a run of 24 steps takes seconds here: signal at the first logged step so that it lands mid-run
    # (wherever it lands, a save included, it must end in a checkpoint and a requeue)
    wait_for(lambda: log.exists() and '"step":1,' in log.read_text(), what="step 1", poll=0.05)
    # what Slurm sends the batch shell before the time limit (--signal=B:USR1@300)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    wait_for(lambda: "restart 1" in (tmp_path / f"train-{job}.out").read_text(), what="the requeued start",
             explain=lambda: tails(rank_log_files(slurm, job)))
    wait_for(lambda: job_state(slurm, job) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), timeout=900,
             what="the requeued job to finish")
    text = (tmp_path / f"train-{job}.out").read_text()
    assert job_state(slurm, job) in ("COMPLETED", "GONE"), text[-3000:]
    assert "requeueing job" in text and "training step exited with status 0" in text
    assert_resumed_equals_reference(reference, out)


def test_sigkill_then_resubmit_resumes_from_the_last_checkpoint(slurm, setup, reference, tmp_path):
    out = tmp_path / "run"
    args = train_job(setup, out, tmp_path, {"trainer.checkpoint_every_n_steps": 4})
    job = sbatch(slurm, args)
    log = out / "tiny_cpu" / "metrics.jsonl"
    wait_for(lambda: log.exists() and '"step":10,' in log.read_text(), what="step 10")
    # node failure stand-in: SIGKILL to the training step's tasks themselves, mid-step or mid-save.
    # (`scancel --signal=KILL --full` would kill the batch shell first, and Slurm then stops the
    # tasks with SIGTERM, which they handle gracefully: a checkpoint, not a failure.)
    subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], env=slurm, check=True)
    # not just "not RUNNING": a job stays COMPLETING (processes still alive, maybe finishing a
    # step and its checkpoint) until slurmd has reaped every process of it
    wait_for(lambda: not in_queue(slurm, job), what="the kill to reap the job's processes")
    killed_at = max(metrics(out)[0])
    job2 = sbatch(slurm, args, wait=True)
    text = (tmp_path / f"train-{job2}.out").read_text()
    rank_log = "\n".join(p.read_text() for p in rank_log_files(slurm, job2))
    resumed = [int(line.split("resumed at step ")[1].split()[0]) for line in rank_log.splitlines()
               if "resumed at step " in line]
    assert resumed and killed_at - 4 <= resumed[0] <= killed_at, (killed_at, resumed, text[-2000:])
    assert_resumed_equals_reference(reference, out)
