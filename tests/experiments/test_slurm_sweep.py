"""The η-sweep on Slurm (nemo_erprm.experiments.slurm_sweep): the paper config's sbatch lines
(dry run), the checks made before anything is submitted, the resubmission rules (against a
stand-in sbatch/squeue), and the tiny config really run on the local Slurm cluster."""

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
    """sbatch and squeue stand-ins on PATH: sbatch logs its arguments and prints ids 101, 102, ...;
    squeue lists the ids written to ``<state>/queue``."""
    state = tmp_path / "fake_slurm"
    (state / "bin").mkdir(parents=True)
    (state / "bin" / "sbatch").write_text(
        f'#!/bin/bash\nn=$(( $(cat {state}/n 2>/dev/null || echo 100) + 1 ))\necho $n > {state}/n\n'
        f'printf "%s\\n" "$*" >> {state}/calls\necho $n\n')
    (state / "bin" / "squeue").write_text(  # squeue -h -j ID -o %i
        f'#!/bin/bash\ngrep -qx "$3" {state}/queue 2>/dev/null && echo "$3"\nexit 0\n')
    for f in (state / "bin").iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{state / 'bin'}:{os.environ['PATH']}")
    return state


def calls(state: Path) -> list[str]:
    f = state / "calls"
    return f.read_text().splitlines() if f.exists() else []


def dry_run(capsys, *overrides: str, out: Path) -> dict[str, list[str]]:
    """Job name -> its sbatch line's words."""
    assert slurm_sweep.main(PAPER, list(overrides), str(out), False, dry_run=True) == 0
    jobs = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("skip"):
            continue
        name, cmd = line.split(": ", 1)
        jobs[name] = shlex.split(cmd)
    return jobs


def value(words: list[str], prefix: str) -> str:
    found = [w[len(prefix):] for w in words if w.startswith(prefix)]
    assert len(found) == 1, (prefix, words)
    return found[0]


def test_paper_dry_run_command_lines(shared_data, fake_policy, tmp_path, capsys):
    out = tmp_path / "sweep"
    jobs = dry_run(capsys, f"policy={fake_policy}", out=out)
    keys = ["eta0.1", "eta1", "eta2", "eta5", "eta8", "eta10", "eta15"]
    assert list(jobs) == (["label", "merge", "convert"] + [f"train.{k}" for k in keys]
                          + ["generate.gsm8k"] + [f"score.gsm8k.{k}" for k in keys]
                          + ["generate.math500"] + [f"score.math500.{k}" for k in keys])
    assert all(w[:2] == ["sbatch", "--parsable"] for w in jobs.values())

    label = jobs["label"]
    assert value(label, "--array=") == "0-31"
    assert "ERPRM_NUM_SHARDS=32" in value(label, "--export=")
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
    label = next(c for c in new if "label_rollouts.sh" in c)
    assert "--array=1,3" in label and "ERPRM_NUM_SHARDS=4" in label  # only the unfinished shards
    assert second["train.eta2"]["after"] == {"merge": second["merge"]["id"]}  # convert is done
    assert second["score.gsm8k.eta2"]["after"]["generate.gsm8k"] == first["generate.gsm8k"]["id"]


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
