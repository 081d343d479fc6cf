"""The η-sweep on Slurm (nemo_erprm.experiments.slurm_sweep): the paper config's sbatch lines
(dry run), the checks made before anything is submitted, the resubmission rules and the
environment each job is submitted with (against a stand-in sbatch/squeue), and on the local
Slurm cluster (Slurm 22.05 from Debian's slurm-wlm): the tiny config really run, and the
container settings as the jobs' own scripts receive them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_erprm.experiments import slurm_sweep

REPO = Path(__file__).resolve().parents[2]
PAPER = "conf/experiments/paper_gsm8k_mistral.yaml"
TINY = "conf/experiments/slurm_tiny.yaml"
PAPER_ETAS = [0.1, 1.0, 2.0, 5.0, 8.0, 10.0, 15.0]


@pytest.fixture
def fake_policy(tmp_path) -> Path:
    policy = tmp_path / "MetaMath-Mistral-7B"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    return policy


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch and squeue stand-ins on PATH: sbatch logs its arguments (``calls``, one line each;
    ``args.<id>``, NUL-separated) and its environment (``env.<id>``) and prints ids 101, 102, ...;
    squeue lists the ids written to ``<state>/queue``."""
    state = tmp_path / "fake_slurm"
    (state / "bin").mkdir(parents=True)
    (state / "bin" / "sbatch").write_text(
        f'#!/bin/bash\nn=$(( $(cat {state}/n 2>/dev/null || echo 100) + 1 ))\necho $n > {state}/n\n'
        f'printf "%s\\n" "$*" >> {state}/calls\nprintf "%s\\0" "$@" > {state}/args.$n\n'
        f'env -0 > {state}/env.$n\necho $n\n')
    (state / "bin" / "squeue").write_text(  # squeue -h -j ID -o %i
        f'#!/bin/bash\ngrep -qx "$3" {state}/queue 2>/dev/null && echo "$3"\nexit 0\n')
    for f in (state / "bin").iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{state / 'bin'}:{os.environ['PATH']}")
    return state


def calls(state: Path) -> list[str]:
    f = state / "calls"
    return f.read_text().splitlines() if f.exists() else []


def submitted(state: Path) -> list[tuple[list[str], dict[str, str]]]:
    """Each sbatch call's arguments and environment, in order."""
    def nul_split(f: Path) -> list[str]:
        return f.read_bytes().decode().split("\0")[:-1]

    ids = sorted(int(f.name.split(".")[1]) for f in state.glob("args.*"))
    return [(nul_split(state / f"args.{i}"), dict(v.split("=", 1) for v in nul_split(state / f"env.{i}")))
            for i in ids]


def dry_run(capsys, *overrides: str, out: Path) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """Job name -> its sbatch line's words (from ``sbatch``), and job name -> what the line's
    ``env`` prefix sets."""
    assert slurm_sweep.main(PAPER, list(overrides), str(out), False, dry_run=True) == 0
    jobs, envs = {}, {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("skip"):
            continue
        name, cmd = line.split(": ", 1)
        words = shlex.split(cmd)
        start = words.index("sbatch")
        assert start == 0 or words[0] == "env", words
        envs[name] = dict(w.split("=", 1) for w in words[1:start])
        jobs[name] = words[start:]
    return jobs, envs


def value(words: list[str], prefix: str) -> str:
    found = [w[len(prefix):] for w in words if w.startswith(prefix)]
    assert len(found) == 1, (prefix, words)
    return found[0]


def test_paper_dry_run_command_lines(shared_data, fake_policy, tmp_path, capsys):
    out = tmp_path / "sweep"
    jobs, envs = dry_run(capsys, f"policy={fake_policy}", out=out)
    keys = ["eta0.1", "eta1", "eta2", "eta5", "eta8", "eta10", "eta15"]
    assert list(jobs) == (["label", "merge", "convert"] + [f"train.{k}" for k in keys]
                          + ["generate.gsm8k"] + [f"score.gsm8k.{k}" for k in keys]
                          + ["generate.math500"] + [f"score.math500.{k}" for k in keys])
    assert all(w[:2] == ["sbatch", "--parsable"] for w in jobs.values())

    label = jobs["label"]
    assert value(label, "--array=") == "0-31"
    assert value(label, "--export=") == "ALL" and envs["label"] == {"ERPRM_NUM_SHARDS": "32"}
    script = label.index("slurm/label_rollouts.sh")
    assert label[script + 1] == "conf/label_gsm8k_mistral.yaml"
    assert value(label, "etas=") == "[0.1,1.0,2.0,5.0,8.0,10.0,15.0]"
    assert value(label, "backend.model=") == str(fake_policy)
    assert value(label, "output.dir=") == str(out / "labels")
    assert not any(w.startswith("--dependency") for w in label)

    merge = jobs["merge"]
    assert value(merge, "--dependency=") == "afterok:<label>"
    assert f"tools/label_rollouts.py merge --dir {out / 'labels'}" in value(merge, "--wrap=")
    assert f"--hf-dir {fake_policy} --out {out / 'prm_init'}" in value(jobs["convert"], "--wrap=")

    records = str(out / "labels" / "records.jsonl")
    for key, eta in zip(keys, PAPER_ETAS):
        train = jobs[f"train.{key}"]
        assert value(train, "--dependency=") == "afterok:<merge>:<convert>"
        assert train[train.index("slurm/train_erprm.sh") + 1] == "conf/erprm_mistral_7b.yaml"
        assert float(value(train, "data.eta=")) == eta
        assert value(train, "data.train=") == records
        assert value(train, "model.init_from=") == str(out / "prm_init")  # the same init for every η
        assert value(train, "run.seed=") == "1234"
        assert value(train, "run.output_dir=") == str(out / "train" / key)
        assert "export.hf=true" in train
        assert value(train, "--export=") == "ALL" and envs[f"train.{key}"] == {"ERPRM_LOG_ROOT": str(out / "logs")}
    for name, problems, fmt in (("gsm8k", "gsm8k/test.jsonl", "gsm8k"), ("math500", "math500/test.jsonl", "math")):
        gen = jobs[f"generate.{name}"]
        assert not any(w.startswith("--dependency") for w in gen)
        wrapped = shlex.split(value(gen, "--wrap="))
        assert wrapped[wrapped.index("--generate") + 1] == "16"
        assert wrapped[wrapped.index("--policy") + 1] == str(fake_policy)
        assert Path(wrapped[wrapped.index("--problems") + 1]) == (shared_data / problems).resolve()
        assert wrapped[wrapped.index("--problems-format") + 1] == fmt
        for key in keys:
            score = jobs[f"score.{name}.{key}"]
            assert value(score, "--dependency=") == f"afterok:<train.{key}>:<generate.{name}>"
            wrapped = shlex.split(value(score, "--wrap="))
            assert wrapped[wrapped.index("--candidates") + 1] == str(out / "candidates" / name / "candidates.jsonl")
            scorer = Path(wrapped[wrapped.index("--scorer") + 1])
            assert scorer.parent.parent == out / "train" / key and scorer.name == "hf"
            assert wrapped[wrapped.index("--out") + 1] == str(out / "bon" / name / key)
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.parametrize("policy, says", [(None, "policy: not set"), ("/no/such/model", "policy=/no/such/model")])
def test_missing_policy_is_one_line_and_submits_nothing(shared_data, fake_slurm, tmp_path, capfd, policy, says):
    overrides = [] if policy is None else [f"policy={policy}"]
    out = tmp_path / "sweep"
    assert slurm_sweep.main(PAPER, overrides, str(out), False) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and says in err, err
    assert calls(fake_slurm) == [] and not out.exists()


def test_config_errors_name_the_key(shared_data, fake_policy, tmp_path, capfd):
    for override, key in (("resources.gpu=[x]", "resources"), ("etas=[2,2.0]", "etas"), ("shards=0", "shards"),
                          ("eval.test_sets=[]", "eval.test_sets"), ("train_overrides=[export.hf=false]", "train_overrides"),
                          ("eval.test_sets=[{name: x, problems: nope.jsonl}]", "eval.test_sets[0] (x)")):
        assert slurm_sweep.main(PAPER, [f"policy={fake_policy}", override], str(tmp_path / "o"), False, True) == 2
        err = capfd.readouterr().err
        assert err.startswith(f"error: {key}"), (override, err)


def test_submission_records_ids_and_resubmits_only_what_is_missing(shared_data, fake_policy, fake_slurm, tmp_path,
                                                                   capsys):
    out = tmp_path / "sweep"
    args = [f"policy={fake_policy}", "shards=4"]
    assert slurm_sweep.main(PAPER, args, str(out), False) == 0
    first = json.loads((out / "submitted.json").read_text())["jobs"]
    assert len(calls(fake_slurm)) == len(first) == 3 + 7 + 2 * (1 + 7)
    # each job waits on the ids sbatch returned for the jobs it depends on
    assert first["merge"]["after"] == {"label": first["label"]["id"]}
    assert first["train.eta2"]["after"] == {"merge": first["merge"]["id"], "convert": first["convert"]["id"]}
    assert f"--dependency=afterok:{first['train.eta2']['id']}:{first['generate.gsm8k']['id']}" in \
        first["score.gsm8k.eta2"]["command"]

    # a rerun: shards 0 and 2 finished, the conversion done, generate.gsm8k still queued, the rest failed
    labels = out / "labels"
    for shard in (0, 2):
        (labels / f"summary.shard-{shard:05d}-of-00004.json").parent.mkdir(parents=True, exist_ok=True)
        (labels / f"summary.shard-{shard:05d}-of-00004.json").write_text("{}")
    (out / "prm_init").mkdir()
    (out / "prm_init" / "prm_config.json").write_text("{}")
    (fake_slurm / "queue").write_text(first["generate.gsm8k"]["id"] + "\n")
    capsys.readouterr()
    assert slurm_sweep.main(PAPER, args, str(out), False) == 0
    printed = capsys.readouterr().out
    assert f"skip   convert: done ({out / 'prm_init'})" in printed
    assert f"keep   generate.gsm8k: job {first['generate.gsm8k']['id']} still in the queue" in printed
    second = json.loads((out / "submitted.json").read_text())["jobs"]
    new = calls(fake_slurm)[len(first):]
    assert len(new) == len(first) - 2  # all but convert and the queued generation
    label, label_env = next((words, env) for words, env in submitted(fake_slurm)[len(first):]
                            if "slurm/label_rollouts.sh" in words)
    assert "--array=1,3" in label and label_env["ERPRM_NUM_SHARDS"] == "4"  # only the unfinished shards
    assert second["train.eta2"]["after"] == {"merge": second["merge"]["id"]}  # convert is done
    assert second["score.gsm8k.eta2"]["after"]["generate.gsm8k"] == first["generate.gsm8k"]["id"]


IMAGE, LABEL_IMAGE = "/images/nemo-erprm.sqsh", "/images/nemo-erprm-label-vllm.sqsh"
MOUNTS = "/models:/models,/data/gsm8k:/data/gsm8k"     # two mounts: a comma inside the value


def container_overrides(label_image: str | None) -> list[str]:
    return [f"container.image={IMAGE}", f"container.mounts={MOUNTS}"] + \
        ([f"container.label_image={label_image}"] if label_image else [])


def expected_image(job_name: str, label_image: str | None) -> str:
    """Labeling and generation run in label_image when it is set; everything else in image."""
    return label_image if label_image and job_name.split(".")[1] in ("label", "generate") else IMAGE


@pytest.mark.parametrize("label_image", [None, LABEL_IMAGE])
def test_every_job_gets_its_image_and_all_mounts(shared_data, fake_policy, fake_slurm, tmp_path, monkeypatch,
                                                 label_image):
    """The scripts' settings travel in sbatch's own environment with --export=ALL, not inside
    --export (sbatch splits that list on commas: the second mount was lost); labeling uses
    container.image when no label_image is set; a setting the config leaves unset is removed
    from what the submitting shell exported."""
    monkeypatch.setenv("ERPRM_LABEL_IMAGE", "/stale/exported-in-the-shell.sqsh")
    out = tmp_path / "sweep,2"        # a comma in the log folder (ERPRM_LOG_ROOT) too
    args = [f"policy={fake_policy}", "shards=4", *container_overrides(label_image)]
    assert slurm_sweep.main(PAPER, args, str(out), False) == 0
    stages = set()
    for words, env in submitted(fake_slurm):
        name = value(words, "--job-name=")
        assert [w for w in words if w.startswith("--export")] in ([], ["--export=ALL"]), words
        if "slurm/label_rollouts.sh" in words:
            assert value(words, "--export=") == "ALL"
            assert env["ERPRM_NUM_SHARDS"] == "4" and env["ERPRM_CONTAINER_MOUNTS"] == MOUNTS
            assert env.get("ERPRM_LABEL_IMAGE") == label_image  # the stale one is gone
            # the script's rule: ERPRM_LABEL_IMAGE, else ERPRM_CONTAINER_IMAGE
            image = env.get("ERPRM_LABEL_IMAGE") or env.get("ERPRM_CONTAINER_IMAGE")
        elif "slurm/train_erprm.sh" in words:
            assert value(words, "--export=") == "ALL"
            assert env["ERPRM_CONTAINER_MOUNTS"] == MOUNTS and env["ERPRM_LOG_ROOT"] == str(out / "logs")
            image = env.get("ERPRM_CONTAINER_IMAGE")
        else:                             # one command, through srun's pyxis flags
            wrapped = shlex.split(value(words, "--wrap="))
            assert value(wrapped, "--container-mounts=") == f"{REPO}:{REPO},{MOUNTS}"
            image = value(wrapped, "--container-image=")
        assert image == expected_image(name, label_image), (name, image)
        stages.add(name.split(".")[1])
    assert stages == set(slurm_sweep.STAGES)
    recorded = json.loads((out / "submitted.json").read_text())["jobs"]["label"]["command"]
    assert shlex.split(recorded)[:3] == (["env", "-u", "ERPRM_LABEL_IMAGE"] if label_image is None
                                         else ["env", "ERPRM_NUM_SHARDS=4", f"ERPRM_LABEL_IMAGE={label_image}"])


# --- on the local Slurm cluster ---------------------------------------------------------------

@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """A local single-node cluster (slurm/local_cluster.sh) on ports of its own, so that it does
    not meet another test's cluster."""
    state = tmp_path_factory.mktemp("slurm_state")
    env = {**os.environ, "ERPRM_SLURM_DIR": str(state), "ERPRM_PYTHON": sys.executable,
           "ERPRM_SLURMCTLD_PORT": "6917", "ERPRM_SLURMD_PORT": "6918"}
    proc = subprocess.run(["bash", "slurm/local_cluster.sh", "up"], cwd=REPO, env=env, capture_output=True, check=False,
                          text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"no local Slurm cluster: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run(["bash", "slurm/local_cluster.sh", "down"], cwd=REPO, env=env, capture_output=True, check=False)


def job_rows(env, job_id: str) -> list[dict[str, str]]:
    """``scontrol show job -o``: one dict per job (an array: one per task)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True, check=False).stdout
    return [dict(w.split("=", 1) for w in line.split() if "=" in w) for line in out.splitlines() if line.strip()]


def log_tails(out: Path, lines: int = 15) -> str:
    return "".join(f"\n--- {f}:\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
                   for f in sorted((out / "logs").glob("*.out")))


@pytest.mark.slow
def test_tiny_sweep_runs_on_local_slurm_and_a_rerun_submits_nothing(local_slurm, tiny_lm_dir, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nemo_erprm.experiments.slurm_sweep", "--config", TINY, "--out", str(out),
           f"policy={tiny_lm_dir}"]
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=local_slurm, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = json.loads((out / "submitted.json").read_text())["jobs"]
    assert len(jobs) == 11 and all(j["status"] == "submitted" for j in jobs.values())
    ids = [j["id"] for j in jobs.values()]

    deadline = time.time() + 420
    while subprocess.run(["squeue", "-h", "-j", ",".join(ids)], env=local_slurm, capture_output=True, check=False,
                         text=True).stdout.strip():
        assert time.time() < deadline, "jobs still queued after 420 s" + log_tails(out)
        time.sleep(2)
    wall = time.time() - started
    rows = {name: job_rows(local_slurm, j["id"]) for name, j in jobs.items()}
    states = {name: {r["JobState"] for r in rs} for name, rs in rows.items()}
    assert all(s == {"COMPLETED"} for s in states.values()), str(states) + log_tails(out)
    assert len(rows["label"]) == 2  # the array: one task per shard
    # every job started after the jobs it waited for had ended
    for name, j in jobs.items():
        for dep in j["after"]:
            assert min(r["StartTime"] for r in rows[name]) >= max(r["EndTime"] for r in rows[dep]), (name, dep)

    records = [json.loads(line) for line in (out / "labels" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all({"2", "10"} <= set(r["labels"]) for r in records)
    for key in ("eta2", "eta10"):
        run_dir = out / "train" / key / f"slurm_tiny_{key}"
        assert list((run_dir / "checkpoints").glob("*-last")), key
        assert (run_dir / "hf" / "prm_config.json").is_file()
        assert OmegaConf.load(run_dir / "config.yaml").data.eta == {"eta2": 2.0, "eta10": 10.0}[key]
        for test_set in ("gsm8k", "math500"):
            report = json.loads((out / "bon" / test_set / key / "report.json").read_text())
            assert report["best_of_n"]["prm_min"], (test_set, key)
            assert Path(report["scorer"]["path"]) == run_dir / "hf"
    print(f"tiny sweep on local Slurm: {len(jobs)} jobs ({sum(len(r) for r in rows.values())} with array tasks), "
          f"{wall:.0f} s wall")

    rerun = subprocess.run(cmd, cwd=REPO, env=local_slurm, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "0 job(s) submitted" in rerun.stdout and rerun.stdout.count("skip ") == 11, rerun.stdout
    assert not subprocess.run(["squeue", "-h"], env=local_slurm, capture_output=True, text=True, check=False).stdout.strip()
    assert {n: j["id"] for n, j in json.loads((out / "submitted.json").read_text())["jobs"].items()} == \
        {n: j["id"] for n, j in jobs.items()}


@pytest.mark.slow
def test_jobs_on_local_slurm_receive_both_mounts_and_the_image(local_slurm, shared_data, fake_policy, tmp_path):
    """The tiny sweep with two mounts and only container.image, submitted to the local cluster:
    real sbatch, slurmctld and slurmd run every job's own batch script (slurm/*.sh or --wrap),
    each of which starts its step with srun --container-image/--container-mounts. pyxis and
    enroot (which add those flags to srun) are not installed here, so ``srun`` on the jobs' PATH
    is a stand-in that records its arguments and environment and exits 0: this checks what the
    jobs receive and hand to srun, not a container start."""
    rec, bin_dir = tmp_path / "srun_calls", tmp_path / "bin"
    rec.mkdir()
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/bash\nf={rec}/"$SLURM_JOB_NAME.${{SLURM_ARRAY_TASK_ID:-0}}"\n'
                                  'printf "%s\\0" "$@" > "$f.args"\nenv -0 > "$f.env"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {**local_slurm, "PATH": f"{bin_dir}:{local_slurm['PATH']}"}
    out = tmp_path / "sweep,1"        # a comma in the log folder (ERPRM_LOG_ROOT) too
    cmd = [sys.executable, "-m", "nemo_erprm.experiments.slurm_sweep", "--config", TINY, "--out", str(out),
           f"policy={fake_policy}", *container_overrides(None)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = json.loads((out / "submitted.json").read_text())["jobs"]
    ids = [j["id"] for j in jobs.values()]
    deadline = time.time() + 300
    while subprocess.run(["squeue", "-h", "-j", ",".join(ids)], env=env, capture_output=True, check=False,
                         text=True).stdout.strip():
        assert time.time() < deadline, "jobs still queued after 300 s" + log_tails(out)
        time.sleep(2)
    states = {name: {r["JobState"] for r in job_rows(env, j["id"])} for name, j in jobs.items()}
    assert all(s == {"COMPLETED"} for s in states.values()), str(states) + log_tails(out)

    def flag(args: list[str], prefix: str) -> str | None:
        return next((a[len(prefix):] for a in args if a.startswith(prefix)), None)

    # step -> (image, mounts, ERPRM_CONTAINER_MOUNTS in the batch script, the folder of the
    # training's per-job rank-log folder: ERPRM_LOG_ROOT as slurm/train_erprm.sh received it)
    seen, want = {}, {}
    for f in sorted(rec.glob("*.args")):
        step = f.name[:-len(".args")]
        args = f.read_bytes().decode().split("\0")[:-1]
        step_env = dict(v.split("=", 1) for v in f.with_suffix(".env").read_bytes().decode().split("\0")[:-1])
        script_job, train = ".label." in step or ".train." in step, ".train." in step
        seen[step] = (flag(args, "--container-image="), flag(args, "--container-mounts="),
                      step_env.get("ERPRM_CONTAINER_MOUNTS") if script_job else None,
                      str(Path(flag(args, "--output=")).parent.parent) if train else None)
        want[step] = (IMAGE, f"{REPO}:{REPO},{MOUNTS}", MOUNTS if script_job else None,
                      str(out / "logs") if train else None)
    assert sorted(seen) == sorted([f"slurm_tiny.label.{i}" for i in range(2)] +
                                  [f"slurm_tiny.{n}.0" for n in jobs if n != "label"])
    assert seen == want
