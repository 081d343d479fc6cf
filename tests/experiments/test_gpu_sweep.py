"""The GPU-scale η-sweep (conf/experiments/arith_gpu.yaml) through its CPU twin
(conf/experiments/arith_gpu_ci.yaml): the same command and code paths at tiny sizes. Checked
from the stages' own artifacts: the policy's checkpoint kept on validation pass@1 with its
last step beside it, both PRM starting points converted and chosen between on validation,
batched candidates, the corruption probe in the report, stages run side by side, and a rerun
that reuses everything. The fast tests cover the pieces on their own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nemo_erprm.errors import ConfigError
from nemo_erprm.experiments import arith_policy as ap
from nemo_erprm.experiments import eta_sweep as es
from nemo_erprm.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[2]
TWIN = "conf/experiments/arith_gpu_ci.yaml"


# ---------------------------------------------------------------------------------------------
# pieces


def test_checkpoint_choice_best_within_the_cap_else_the_lowest():
    m = [{"step": 300, "pass@1": 0.15}, {"step": 600, "pass@1": 0.55}, {"step": 900, "pass@1": 0.86},
         {"step": 1200, "pass@1": 0.55}]
    assert ap.choose_checkpoint(m, 0.8)["step"] == 1200  # 0.55 twice: the later one
    assert ap.choose_checkpoint(m, 1.0)["step"] == 900
    assert ap.choose_checkpoint([{"step": 1, "pass@1": 0.9}, {"step": 2, "pass@1": 0.85}], 0.8)["step"] == 2
    with pytest.raises(ConfigError, match="--max-pass-at-1"):
        ap.TrainSettings(max_pass_at_1=0)
    with pytest.raises(ConfigError, match="--device"):
        ap.TrainSettings(device="tpu")


def test_run_parallel_runs_everything_then_raises_the_first_failure():
    started, lock = [], threading.Lock()

    def job(x: int) -> int:
        with lock:
            started.append(x)
        time.sleep(0.05)
        if x in (1, 3):
            raise es.StageError(f"stage {x} failed")
        return x * 10

    assert es.run_parallel(job, [0, 2, 4], 2) == [0, 20, 40]
    started.clear()
    with pytest.raises(es.StageError, match="stage 1 failed"):
        es.run_parallel(job, [0, 1, 2, 3, 4], 3)
    assert sorted(started) == [0, 1, 2, 3, 4]  # one failure does not stop the others


def test_grid_init_and_new_keys_are_validated(tmp_path):
    cfg = es.load_sweep_config(TWIN, [])
    assert [g.key for g in cfg.grid] == ["lr0.001_ep1_policy", "lr0.001_ep1_policy_last"]
    assert es.GridPoint(lr=1e-3, epochs=2).key == "lr0.001_ep2"  # unchanged for grids without init
    bad = {
        "grid=[{lr: 0.001, epochs: 1, init: backbone}]": "needs backbone.args",
        "grid=[{lr: 0.001, epochs: 1, init: scratch}]": "must be one of policy, policy_last, backbone",
        "probes=[likelihood]": "probes: unknown",
        "parallel=0": "parallel must be >= 1",
        "eval.generate_batch=0": "eval.generate_batch",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            es.load_sweep_config(TWIN, [override])
    with pytest.raises(ConfigError, match="needs policy.args.eval_every"):
        es.load_sweep_config(TWIN, ["policy.args.eval_every=0"])


def test_gpu_config_loads_and_keeps_to_its_budget_shape():
    cfg = es.load_sweep_config("conf/experiments/arith_gpu.yaml", [])
    assert cfg.seeds == [1] and cfg.eval.n == 16 and set(cfg.label_sets()) == {"eta0", "eta2", "etainf", "orm"}
    assert {g.init for g in cfg.grid} == {"policy", "policy_last"} and cfg.probes == ["corruption"]
    assert cfg.policy.args["eval_every"] and cfg.policy.args["max_pass_at_1"] == 0.8
    assert cfg.parallel >= len(cfg.label_sets()) * len(cfg.grid)  # every PRM of the grid trains at once


def test_reference_candidates_are_right_at_every_step(tmp_path):
    from nemo_erprm.experiments import arith_task as at
    from nemo_erprm.experiments.probes import corruption_pairs

    at.write_splits(tmp_path, seed=0, n_train=2, n_val=2, n_test=5)
    es.reference_candidates(tmp_path / "test.jsonl", tmp_path / "ref.jsonl")
    rows = read_jsonl(tmp_path / "ref.jsonl")
    problems = read_jsonl(tmp_path / "test.jsonl")
    assert [r["candidates"] for r in rows] == [[p["answer"]] for p in problems]
    assert all(at.first_wrong_step(p, at.segment(p["answer"])) == -1 for p in problems)
    assert len(corruption_pairs(tmp_path / "ref.jsonl", seed=1)) == 5  # one pair per problem


@pytest.mark.slow
def test_generate_batch_samples_the_same_candidates(tmp_path):
    """``tools/best_of_n.py --generate-batch K``: the same candidates as one problem at a time
    (seeds are per completion), with a real tiny HF policy."""
    from tests.tiny_models import build_tiny_llama

    policy = build_tiny_llama(tmp_path / "policy")
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": f"Tom has {i} apples and buys {i + 3}. How many?",
                                            "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"}) + "\n"
                                for i in range(5)))
    files = []
    for k in (1, 3):
        out = tmp_path / f"k{k}"
        proc = subprocess.run([sys.executable, "tools/best_of_n.py", "--generate", "3", "--policy", str(policy),
                               "--problems", str(problems), "--max-new-tokens", "12", "--generate-batch", str(k),
                               "--scorer", "none", "--out", str(out), "--bootstrap", "0", "--no-progress"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        files.append(read_jsonl(out / "candidates.jsonl"))
    assert files[0] == files[1] and len(files[0]) == 5 and all(len(r["candidates"]) == 3 for r in files[0])


# ---------------------------------------------------------------------------------------------
# the twin, end to end


def _sweep(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_erprm.experiments.eta_sweep", "--config", TWIN,
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_twin")
    t0 = time.time()
    proc = _sweep(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, time.time() - t0


@pytest.mark.slow
def test_twin_stages_agree_with_their_artifacts(twin):
    out, _ = twin
    report = json.loads((out / "report.json").read_text())
    seed, d = report["seeds"]["1"], out / "seed1"

    # the policy: validation pass@1 measured every eval_every steps, the kept one chosen by the
    # rule, its figures the report's, the last step's model beside it
    policy = json.loads((d / "policy" / "policy_summary.json").read_text())
    steps = [c["step"] for c in policy["checkpoints"]]
    assert steps == [5, 10] and policy["last_step"] == 10
    assert policy["chosen_step"] == ap.choose_checkpoint(policy["checkpoints"], 0.8)["step"]
    assert seed["policy"]["chosen_step"] == policy["chosen_step"]
    assert (d / "policy" / "last" / "model.safetensors").is_file()

    # both starting points converted from their own models; the grid choice made on validation
    init_policy = json.loads((d / "prm_init" / "prm_config.json").read_text())
    init_last = json.loads((d / "prm_init_policy_last" / "prm_config.json").read_text())
    assert init_policy["head"] == init_last["head"] == "lm_tokens"
    sel = report["selection"]
    assert sel["split"] == "val" and set(sel["grid"]) == {"lr0.001_ep1_policy", "lr0.001_ep1_policy_last"}
    for key, row in sel["grid"].items():
        for name, value in row["per_label_set"].items():
            val_report = json.loads((d / "bon" / "val" / f"{name}_{key}" / "report.json").read_text())
            assert value == next(p["accuracy"] for p in val_report["best_of_n"]["prm_min"] if p["n"] == 2)
    chosen = max(sel["grid"], key=lambda k: sel["grid"][k]["mean"])
    assert sel["chosen"]["key"] == chosen

    # the untrained PRM is the chosen init's; the trained ones train from it
    for name in ("eta2",):
        cfg = (d / "train" / f"{name}_{chosen}" / "prm" / "config.yaml").read_text()
        assert f"init_from: {d / ('prm_init_policy_last' if chosen.endswith('_last') else 'prm_init')}" in cfg

    # candidates: n per problem, sampled together
    for split in ("val", "test"):
        rows = read_jsonl(d / "candidates" / split / "candidates.jsonl")
        assert len(rows) == 6 and all(len(r["candidates"]) == 4 for r in rows)

    # the corruption probe: one file per PRM, the report's numbers are the files'
    probes = seed["probes"]
    assert set(probes) == {"corruption.untrained", "corruption.eta2"}
    for key, fig in probes.items():
        name = key.split(".", 1)[1]
        [on_disk] = read_jsonl(d / "probes" / f"corruption_{name}.json")
        assert fig == on_disk and fig["pairs"] == 6 and 0.0 <= fig["p_right_above_corrupted"] <= 1.0
    md = (out / "report.md").read_text()
    assert "## Step-checking probes" in md and f"{probes['corruption.eta2']['p_right_above_corrupted']:.3f}" in md
    assert all(report["stage_seconds"][s] is not None for s in report["stage_seconds"])
    assert (out / "best_of_n_seed1.png").stat().st_size > 1000


@pytest.mark.slow
def test_twin_rerun_reuses_every_stage_and_fits_ci(twin):
    out, seconds = twin
    before = json.loads((out / "report.json").read_text())["seeds"]
    proc = _sweep(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stages print from several threads: count the messages, not the lines
    ran = re.findall(r"=== (\S+) done in ", proc.stdout)
    reused = re.findall(r"=== (\S+): reusing finished outputs", proc.stdout)
    assert ran == [] and len(reused) == 15, proc.stdout[-3000:]
    assert json.loads((out / "report.json").read_text())["seeds"] == before
    print(f"arith_gpu_ci twin: {seconds:.0f} s")
