"""The η-sweep's own computations, without models: the paired per-problem Best-of-N values equal
the Best-of-N tool's curves, the paired bootstrap, the ORM's offline input, the first-error
files, and the config checks."""

import json
import math
import random
from pathlib import Path

import pytest

from nemo_erprm.errors import ConfigError
from nemo_erprm.eval.best_of_n import best_of_n_curves
from nemo_erprm.experiments import eta_sweep
from nemo_erprm.experiments.arith_task import first_wrong_step, make_splits
from nemo_erprm.experiments.sweep_report import load_scored, paired_diff, per_problem
from nemo_erprm.jsonl import write_jsonl_atomic
from nemo_erprm.labeling.problems import InputConfig, load_problems


def _scored_file(tmp_path, n_problems=12, n_cands=6, seed=0):
    rng = random.Random(seed)
    rows = []
    for p in range(n_problems):
        cands = []
        for c in range(n_cands):
            scores = [rng.random() for _ in range(rng.randint(1, 4))]
            cands.append({"source": "policy", "answer": str(rng.randint(0, 3)), "correct": rng.random() < 0.4,
                          "step_scores": scores,
                          "aggregated": {"min": min(scores), "last": scores[-1], "mean": sum(scores) / len(scores),
                                         "product": math.prod(scores)}})
        rows.append({"id": f"p{p}", "gold": "1", "candidates": cands})
    path = tmp_path / "candidates_scored.jsonl"
    write_jsonl_atomic(path, rows)
    return path


def test_per_problem_values_reproduce_the_best_of_n_tool(tmp_path):
    problems, scores = load_scored(_scored_file(tmp_path))
    step_scores = [[[s] for s in sc["min"]] for sc in scores]  # aggregate("min") of one score is itself
    curves = best_of_n_curves(problems, step_scores, ["min"], n_max=6, subsets=7, bootstrap=0, seed=3)
    for method in ("random", "majority", "oracle", "prm_min"):
        for point in curves[method]:
            values = per_problem(problems, scores, method, point.n, subsets=7, seed=3)
            assert sum(values) / len(values) == pytest.approx(point.accuracy, abs=1e-12)
    # another seed draws other subsets (N=2 of 6 has 15 > 7 subsets): the pairing depends on the seed
    assert per_problem(problems, scores, "prm_min", 2, 7, 3) != per_problem(problems, scores, "prm_min", 2, 7, 4)


def test_paired_difference_interval():
    a = [1.0] * 30 + [0.0] * 10
    b = [0.0] * 30 + [0.0] * 10
    d = paired_diff(a, b, samples=500, seed=0)
    assert d["diff"] == pytest.approx(0.75) and 0.5 < d["low"] < 0.75 < d["high"] <= 1.0 and d["excludes_zero"]
    same = paired_diff(a, a, samples=500, seed=0)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False}


def test_orm_input_labels_every_step_with_the_outcome(tmp_path):
    records = tmp_path / "records.jsonl"
    write_jsonl_atomic(records, [
        {"id": "q1/0", "question": "Q1?", "gold": "5", "steps": ["2 + 3 = 5\n#### 5"], "outcome": True},
        {"id": "q2/0", "question": "Q2?", "gold": "7", "steps": ["1 + 1 = 3\n", "3 + 4 = 7\n#### 7"],
         "outcome": False},
    ])
    out = tmp_path / "orm.jsonl"
    eta_sweep.orm_offline_input(records, out)
    problems = load_problems(InputConfig(path=str(out), format="offline", id_field="id"), "ки")
    assert [p.id for p in problems] == ["q1-0", "q2-0"]
    assert problems[0].offline[0].step_rewards == [[1.0]]
    assert problems[1].offline[0].step_rewards == [[0.0], [0.0]]
    assert problems[1].offline[0].steps == ["1 + 1 = 3", "3 + 4 = 7\n#### 7"]


def test_first_error_file_uses_the_exact_checker(tmp_path):
    splits = make_splits(5, 2, 1, 1)
    problem = splits["test"][0]
    problems = tmp_path / "test.jsonl"
    write_jsonl_atomic(problems, [problem])
    right = problem["answer"]
    lines = right.split("\n")
    first_eq = lines[0].rsplit("=", 1)
    wrong = "\n".join([f"{first_eq[0]}= {int(first_eq[1]) + 1}"] + lines[1:])
    cands = tmp_path / "candidates.jsonl"
    write_jsonl_atomic(cands, [{"id": "t0", "question": problem["question"], "gold": "x", "candidates": [right, wrong]}])
    out = tmp_path / "pb.jsonl"
    eta_sweep.processbench_file(cands, problems, out, per_problem=2)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == [-1, 0]
    assert rows[1]["label"] == first_wrong_step(problem, rows[1]["steps"])


def test_label_set_names_and_config_errors(tmp_path):
    cfg = eta_sweep.load_sweep_config("conf/experiments/arith_cpu.yaml", [])
    assert list(cfg.label_sets()) == ["eta0", "eta0.5", "eta1", "eta2", "eta5", "eta10", "etainf", "orm"]
    assert cfg.task.train > cfg.task.val > 0 and len(cfg.seeds) == 2
    for bad, key in ((["grid=[]"], "grid"), (["eval.select_n=99"], "eval.select_n"),
                     (["seeds=[1,1]"], "seeds"), (["eval.aggregation=max"], "eval.aggregation")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            eta_sweep.load_sweep_config("conf/experiments/arith_cpu.yaml", bad)


def test_cli_bad_config_is_one_line(tmp_path, capsys):
    rc = eta_sweep.main(["--config", "conf/experiments/arith_ci.yaml", "--out", str(tmp_path / "o"), "grid=[]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "grid" in err[0]
    assert not (tmp_path / "o").exists()


def test_divergence_auc_compares_the_first_differing_step(tmp_path):
    """Two right and one wrong candidate of one problem; the right ones first differ from the
    wrong one at step 2 (index 1), where the PRM's scores decide: one win, one tie."""
    from nemo_erprm.experiments.sweep_report import candidate_steps, divergence_auc

    texts = ["2 + 3 = 5\n5 * 2 = 10\n#### 10", "2 + 3 = 5\n5 * 2 = 10\n#### 10", "2 + 3 = 5\n5 * 2 = 12\n#### 12"]
    write_jsonl_atomic(tmp_path / "c.jsonl", [{"id": "p", "question": "q", "gold": "10", "candidates": texts}])

    def cand(i, correct, scores):
        return {"source": str(i), "answer": "", "correct": correct, "step_scores": scores, "aggregated": {}}

    rows = [{"id": "p", "gold": "10", "candidates": [cand(0, True, [0.1, 0.9]), cand(1, True, [0.9, 0.4]),
                                                        cand(2, False, [0.2, 0.4])]}]
    write_jsonl_atomic(tmp_path / "s.jsonl", rows)
    steps = candidate_steps(tmp_path / "c.jsonl")
    assert divergence_auc(steps, tmp_path / "s.jsonl") == {"auc": 0.75, "pairs": 2}
    rows[0]["candidates"][2]["step_scores"] = [0.2, 0.95]  # the wrong step now outscores both
    write_jsonl_atomic(tmp_path / "s.jsonl", rows)
    assert divergence_auc(steps, tmp_path / "s.jsonl")["auc"] == 0.0


def test_backbone_defaults_to_the_policy(tmp_path):
    cfg = eta_sweep.load_sweep_config("conf/experiments/arith_ci.yaml", [])
    assert cfg.backbone.args == {}
    cfg = eta_sweep.load_sweep_config("conf/experiments/arith_ci.yaml", ["backbone.args={steps: 20}"])
    assert cfg.backbone.args == {"steps": 20}


class _RecordingStages:
    """Stands in for `Stages`: records each stage's command and writes the files the next
    stages read, so `SeedRun.prepare` can be followed without models."""

    def __init__(self):
        self.cmds: dict[str, list[str]] = {}

    def run(self, name, settings, cmd, output, estimate_s, produced, env=None):
        self.cmds[name.split(".", 1)[1]] = [str(c) for c in cmd]
        out = Path(output)
        if name.endswith(".task"):
            rows = [{"id": f"t{i}", "question": f"q{i}", "answer": "1 + 1 = 2\n#### 2"} for i in range(6)]
            write_jsonl_atomic(out / "train.jsonl", rows)
            for split in ("val", "test"):
                write_jsonl_atomic(out / f"{split}.jsonl", [])
        elif name.split(".", 1)[1].startswith("candidates_"):
            write_jsonl_atomic(out / "candidates.jsonl", [])
        elif name.endswith((".policy", ".backbone")):
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.safetensors").write_bytes(name.encode())
        elif name.endswith(".label"):
            write_jsonl_atomic(out / "records.shard-00000-of-00001.jsonl", [])
        return True


@pytest.mark.parametrize("backbone", [{}, {"steps": 20}])
def test_the_prm_starts_from_the_backbone_when_one_is_set(tmp_path, backbone):
    cfg = eta_sweep.load_sweep_config("conf/experiments/arith_ci.yaml", ["outcome_rm=false"])
    cfg.backbone.args = backbone
    stages = _RecordingStages()
    run = eta_sweep.SeedRun(cfg, 1, tmp_path, stages)
    run.prepare()
    convert = stages.cmds["convert"]
    hf_dir = Path(convert[convert.index("--hf-dir") + 1])
    if backbone:
        assert hf_dir == tmp_path / "seed1" / "backbone"
        cmd = stages.cmds["backbone"]
        assert cmd[cmd.index("--out") + 1] == str(hf_dir) and cmd[cmd.index("--steps") + 1] == "20"
        # the backbone trains on the policy's problems, never on the PRM's labeled ones
        assert cmd[cmd.index("--train") + 1] == stages.cmds["policy"][stages.cmds["policy"].index("--train") + 1]
    else:
        assert hf_dir == tmp_path / "seed1" / "policy" and "backbone" not in stages.cmds
    # rollouts and candidates always come from the policy
    assert any(c == f"backend.model={tmp_path / 'seed1' / 'policy'}" for c in stages.cmds["label"])
