"""Best-of-N: votes group answers the grader calls equal, N is not silently capped by one
problem with few candidates (each point says how many problems it averages), and a failed run
leaves no empty --out folder."""

import json

import pytest

from nemo_erprm.eval.aggregate import vote_accuracy
from nemo_erprm.eval.best_of_n import best_of_n_curves
from nemo_erprm.eval.candidates import load_candidates, vote_key
from nemo_erprm.eval.cli import main as bon_main


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_majority_vote_groups_numerically_equal_answers():
    assert vote_key("20.50") == vote_key("20.5") and vote_key("12.0") == vote_key("12") == vote_key("12/1")
    assert vote_key("1/2") == vote_key("0.5") and vote_key("7") != vote_key("8") and vote_key(None) is None
    # "20.50" and "20.5" are one answer with two votes, beating the single wrong "3"
    answers = [vote_key(a) for a in ("20.50", "20.5", "3")]
    assert vote_accuracy(answers, [True, True, False]) == 1.0


def test_majority_at_4_on_the_shared_set_matches_the_grader(shared_data, tmp_path):
    """Peer check (issue 17): majority@4 is 0.481741 when equal values vote together
    (0.481931 when votes were keyed by the normalised text)."""
    out = tmp_path / "none"
    assert bon_main(["--candidates", str(shared_data / "bon" / "gsm8k_test_4_model_solutions.jsonl"),
                     "--scorer", "none", "--out", str(out), "--bootstrap", "0", "--no-progress"]) == 0
    curves = json.loads((out / "report.json").read_text())["best_of_n"]
    assert curves["majority"][-1]["n"] == 4
    assert curves["majority"][-1]["accuracy"] == pytest.approx(0.481741, abs=5e-7)


def _problems(tmp_path, sizes):
    rows = [{"question": f"q{i}?", "gold": "1", "candidates": ["#### 1", "#### 2", "#### 1", "#### 3"][:k]}
            for i, k in enumerate(sizes)]
    problems, _ = load_candidates(write(tmp_path / "c.jsonl", rows))
    return problems


def test_one_problem_with_one_candidate_does_not_cap_the_curve(tmp_path, capsys):
    problems = _problems(tmp_path, [4, 4, 4, 1])
    curves = best_of_n_curves(problems, None, [], bootstrap=0)
    assert [(p.n, p.problems) for p in curves["oracle"]] == [(1, 4), (2, 3), (4, 3)]
    out = tmp_path / "out"
    assert bon_main(["--candidates", str(tmp_path / "c.jsonl"), "--scorer", "none", "--out", str(out),
                     "--bootstrap", "0", "--no-progress", "--n-max", "16"]) == 0
    err = capsys.readouterr().err
    assert "note: N=2: 3 of 4 problems count (1 have fewer than 2 candidates)" in err
    assert "note: --n-max 16: curves stop at N=4 (no problem has more than 4 candidates)" in err
    report = json.loads((out / "report.json").read_text())
    assert [p["problems"] for p in report["best_of_n"]["random"]] == [4, 3, 3]
    assert "| problems counted | 4 | 3 | 3 |" in (out / "report.md").read_text()


def test_failed_run_leaves_no_empty_out_folder(tmp_path, capsys):
    bad = write(tmp_path / "bad.jsonl", [{"question": "q?", "candidates": []}])
    out = tmp_path / "out"
    assert bon_main(["--candidates", str(bad), "--scorer", "none", "--out", str(out), "--no-progress"]) == 2
    assert "bad.jsonl:1: bad candidate record: no candidate solutions" in capsys.readouterr().err
    assert not out.exists()
