"""Best-of-N without a model (the shared GSM8K Best-of-4 set), candidate layouts, selection
rules with ties, exact subsets, the score cache and ProcessBench metrics."""

import json
import random

import pytest

from nemo_erprm.eval.aggregate import AGGREGATIONS, aggregate, pick_accuracy, vote_accuracy
from nemo_erprm.eval.best_of_n import best_of_n_curves, n_values, subsets_of
from nemo_erprm.eval.cache import ScoreCache
from nemo_erprm.eval.candidates import load_candidates
from nemo_erprm.eval.cli import main as bon_main
from nemo_erprm.eval.processbench import StepSample, evaluate_steps, first_error, load_processbench, step_metrics
from nemo_erprm.jsonl import RecordError


def test_no_model_on_the_shared_best_of_4_set(shared_data, tmp_path):
    """Acceptance: random 0.379, oracle@4 0.672 (+-0.001) from labels recomputed by our grader."""
    out = tmp_path / "none"
    assert bon_main(["--candidates", str(shared_data / "bon" / "gsm8k_test_4_model_solutions.jsonl"),
                     "--scorer", "none", "--out", str(out), "--bootstrap", "200", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    curves = {m: {p["n"]: p for p in pts} for m, pts in report["best_of_n"].items()}
    assert report["data"]["graded"] == report["data"]["candidates"] == 5276
    assert report["data"]["label_disagreements"] == 0
    assert abs(curves["random"][4]["accuracy"] - 0.379) <= 0.001
    assert abs(curves["oracle"][4]["accuracy"] - 0.672) <= 0.001
    assert curves["oracle"][1]["accuracy"] == pytest.approx(curves["random"][1]["accuracy"])
    maj = curves["majority"][4]
    assert curves["random"][4]["accuracy"] < maj["accuracy"] < curves["oracle"][4]["accuracy"]
    assert maj["low"] < maj["accuracy"] < maj["high"]
    md = (out / "report.md").read_text()
    assert "| majority |" in md and "N=4" in md
    assert (out / "best_of_n.png").stat().st_size > 10_000


def test_layouts_grading_and_disagreements(tmp_path):
    rlhflow = tmp_path / "rlhflow.jsonl"
    rlhflow.write_text(json.dumps({"prompt": "What is 2+3?", "gt": "5",
                                   "answers": ["2 plus 3 is 5.\nThe answer is: 5", "2 plus 3 is 6.\n#### 6"],
                                   "label": [1, 1]}) + "\n")
    problems, rep = load_candidates(rlhflow)
    assert rep.layout == "rlhflow" and [c.correct for c in problems[0].candidates] == [True, False]
    assert rep.label_disagreements == 1 and rep.disagreement_examples[0]["given"] is True

    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps({"id": "q1", "question": "What is 2+3?", "gold": "5", "candidates": [
        "Add them: 2 + 3 = 5.\n#### 5", {"steps": ["First, 2 + 3 = 4.\n", "#### 4"], "source": "m2"}]}) + "\n")
    problems, rep = load_candidates(ours)
    assert rep.layout == "ours" and problems[0].id == "q1"
    assert problems[0].candidates[1].steps == ["First, 2 + 3 = 4.\n", "#### 4"]
    assert [c.correct for c in problems[0].candidates] == [True, False]
    # no gold: the given labels decide
    nogold = tmp_path / "nogold.jsonl"
    nogold.write_text(json.dumps({"question": "Q?", "candidates": [{"solution": "x\n#### 1", "label": True}]}) + "\n")
    assert load_candidates(nogold)[0][0].candidates[0].correct is True


def test_bad_candidate_records_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q", "gold": "1", "candidates": ["a\n#### 1"]}) + "\n"
                   + json.dumps({"question": "Q", "gold": "1", "candidates": [3]}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2.*candidate 0"):
        load_candidates(bad)
    # a candidate holding the step tag is no error (tests/eval/test_bon_step_tag.py)
    with pytest.raises(RecordError, match=r"bad.jsonl:1.*missing field 'answers'"):
        load_candidates(bad, layout="rlhflow")


def test_bad_batch_size_is_a_clear_error(shared_data, tmp_path, capsys):
    code = bon_main(["--candidates", str(shared_data / "bon" / "gsm8k_test_4_model_solutions.jsonl"),
                     "--scorer", "none", "--out", str(tmp_path / "out"), "--batch-size", "0", "--no-progress"])
    assert code == 2 and "--batch-size must be at least 1, got 0" in capsys.readouterr().err


def test_aggregations_and_selection_with_ties():
    s = [0.9, 0.2, 0.6]
    assert aggregate(s, "min") == 0.2 and aggregate(s, "last") == 0.6
    assert aggregate(s, "mean") == pytest.approx(1.7 / 3)
    assert aggregate(s, "product") == pytest.approx(0.108)
    assert aggregate(s, "geomean") == pytest.approx(0.108 ** (1 / 3))
    assert set(AGGREGATIONS) == {"min", "last", "mean", "product", "geomean"}
    assert pick_accuracy([0.7, 0.7, 0.1], [True, False, True]) == 0.5  # a tie is a coin flip
    assert pick_accuracy([0.2, 0.7, 0.1], [True, False, True]) == 0.0
    # majority: "5" (right) twice, "6" once; PRM-weighted, the one "6" outweighs both
    answers, correct = ["5", "6", "5"], [True, False, True]
    assert vote_accuracy(answers, correct) == 1.0
    assert vote_accuracy(answers, correct, weights=[0.1, 0.9, 0.1]) == 0.0
    assert vote_accuracy(["5", "6"], [True, False]) == 0.5
    assert vote_accuracy([None, None], [True, False]) == 0.5


def test_subsets_are_exact_when_few_and_curves_match_brute_force():
    rng = random.Random(0)
    assert subsets_of(4, 2, 200, rng) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(subsets_of(16, 8, 50, rng)) == 50
    assert n_values(16) == [1, 2, 4, 8, 16] and n_values(6) == [1, 2, 4, 6]
    from nemo_erprm.eval.candidates import BoNProblem, Candidate

    probs = []
    for j in range(5):
        cands = [Candidate("t", ["t"], str(i), answer=str(rng.randint(0, 2)), correct=None) for i in range(4)]
        for c in cands:
            c.correct = c.answer == "1"
        probs.append(BoNProblem(str(j), "q", "1", cands))
    scores = [[[rng.random(), rng.random()] for _ in range(4)] for _ in probs]
    curves = best_of_n_curves(probs, scores, ["min"], bootstrap=0)
    # brute force over every pair, PRM pick by min score
    total = 0.0
    for p, sc in zip(probs, scores):
        pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
        acc = 0.0
        for a, b in pairs:
            va, vb = min(sc[a]), min(sc[b])
            acc += p.candidates[a].correct if va > vb else p.candidates[b].correct
        total += acc / len(pairs)
    point = {pt.n: pt for pt in curves["prm_min"]}[2]
    assert point.accuracy == pytest.approx(total / len(probs))
    oracle4 = {pt.n: pt for pt in curves["oracle"]}[4].accuracy
    assert oracle4 == pytest.approx(sum(any(c.correct for c in p.candidates) for p in probs) / len(probs))


def test_score_cache_scores_each_item_once_and_survives_a_torn_line(tmp_path):
    calls = []

    def scorer(items):
        calls.extend(items)
        return [[len(q) / 10.0] * len(steps) for q, steps in items]

    items = [("q1", ["a", "b"]), ("q22", ["c"]), ("q1", ["a", "b"])]
    cache = ScoreCache(tmp_path / "c.jsonl")
    first = cache.score("fp", items, scorer, batch_size=1)
    cache.close()
    assert first == [[0.2, 0.2], [0.3], [0.2, 0.2]] and len(calls) == 2  # duplicates scored once
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "torn')  # a kill mid-write
    cache = ScoreCache(tmp_path / "c.jsonl")
    assert cache.score("fp", items, scorer) == first and len(calls) == 2
    assert cache.score("other-model", items[:1], scorer) == [[0.2, 0.2]] and len(calls) == 3


def test_processbench_metrics(tmp_path):
    samples = [StepSample("a", "p", ["s1", "s2", "s3"], 1), StepSample("b", "p", ["s1", "s2"], -1),
               StepSample("c", "p", ["s1", "s2"], 0)]
    scores = [[0.9, 0.3, 0.8], [0.8, 0.7], [0.6, 0.9]]
    assert first_error(scores[0], 0.5) == 1 and first_error(scores[1], 0.5) == -1
    m = step_metrics(samples, scores, 0.5)
    assert m["erroneous_accuracy"] == 0.5 and m["correct_accuracy"] == 1.0
    assert m["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    m = step_metrics(samples, scores, 0.65)  # now c is caught, b still clean
    assert m["erroneous_accuracy"] == 1.0 and m["correct_accuracy"] == 1.0
    result = evaluate_steps(samples, scores)
    assert result["chosen"]["f1"] == 1.0 and "optimistic" in result["threshold_chosen_on"]
    split = evaluate_steps(samples, scores, samples[:2], scores[:2])
    assert split["threshold_chosen_on"] == "threshold split"
    path = tmp_path / "pb.jsonl"
    path.write_text(json.dumps({"id": 1, "problem": "p", "steps": ["a"], "label": 3}) + "\n")
    with pytest.raises(RecordError, match="pb.jsonl:1.*label"):
        load_processbench(path)
