"""The arithmetic task: deterministic disjoint splits, exact step checking, project file formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.eval.processbench import load_processbench
from nemo_erprm.experiments import arith_task as at
from nemo_erprm.jsonl import read_jsonl, write_jsonl_atomic
from nemo_erprm.labeling.grading import grade
from nemo_erprm.labeling.problems import InputConfig, load_problems

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def splits():
    return at.make_splits(3, 300, 60, 60)


def _problem(start, ops):
    values = [start]
    for op, n in ops:
        values.append(at.apply_op(values[-1], op, n))
    return {"id": "p", "question": "q", "start": start, "ops": [list(o) for o in ops], "values": values,
            "answer": at.reference_solution(values, ops)}


# 23 + 15 = 38 / 38 - 7 = 31 / 31 * 2 = 62 / #### 62
P = _problem(23, [("+", 15), ("-", 7), ("*", 2)])


def test_same_seed_same_problems_other_seed_others():
    a, b, c = at.make_splits(5, 50, 10, 10), at.make_splits(5, 50, 10, 10), at.make_splits(6, 50, 10, 10)
    assert a == b
    assert [p["question"] for p in a["test"]] != [p["question"] for p in c["test"]]


def test_test_and_val_do_not_depend_on_train_size():
    small, big = at.make_splits(5, 10, 20, 20), at.make_splits(5, 200, 20, 20)
    assert small["test"] == big["test"] and small["val"] == big["val"]


def test_splits_are_disjoint_and_well_formed(splits):
    keys, questions = set(), set()
    for name, problems in splits.items():
        assert len(problems) == {"train": 300, "val": 60, "test": 60}[name]
        for p in problems:
            key = (p["start"], tuple(map(tuple, p["ops"])))
            assert key not in keys and p["question"] not in questions
            keys.add(key)
            questions.add(p["question"])
            assert 2 <= p["num_steps"] == len(p["ops"]) <= 5 and p["split"] == name
            assert all(isinstance(v, int) and 0 <= v <= at.MAX_VALUE for v in p["values"])
            assert p["values"][0] == p["start"]
            for k, (op, n) in enumerate(p["ops"]):
                assert p["values"][k + 1] == at.apply_op(p["values"][k], op, n)
                assert str(n) in p["question"] or op in "*/"
    assert {p["num_steps"] for p in splits["train"]} == {2, 3, 4, 5}
    assert {op for p in splits["train"] for op, _ in p["ops"]} == {"+", "-", "*", "/"}


def test_reference_solutions_pass_checker_and_grader(splits):
    for p in splits["train"] + splits["test"]:
        steps = at.segment(p["answer"])
        # "#### N" (under 8 characters when N < 100) joins the last equation's step
        assert len(steps) == p["num_steps"] + (p["values"][-1] >= 100)
        assert at.first_wrong_step(p, steps) == -1
        assert at.solution_correct(p, p["answer"]) and at.answer_correct(p, p["answer"])
        assert grade(p["answer"], str(p["values"][-1]))


@pytest.mark.parametrize("text, expected", [
    ("23 + 15 = 38\n38 - 7 = 32\n32 * 2 = 64\n#### 64", 1),  # wrong arithmetic in step 2
    ("23 + 15 = 38\n38 - 8 = 30\n30 * 2 = 60\n#### 60", 1),  # wrong operand copied
    ("23 + 15 = 38\n37 - 7 = 30\n30 * 2 = 60\n#### 60", 1),  # wrong left operand (not the previous value)
    ("23 + 15 = 38\n38 + 7 = 45\n45 * 2 = 90\n#### 90", 1),  # wrong operation
    ("23 + 15 = 38\n38 * 2 = 76\n#### 76", 1),  # skipped step
    ("23 + 15 = 38\n38 - 7 = 31\n31 * 2 = 62\n62 + 1 = 63\n#### 63", 3),  # extra step
    ("23 + 15 = 38\n38 - 7 = 31\n31 * 2 = 62\n#### 63", 2),  # wrong final line (merged into step 2)
    ("23 + 15 = 38\n38 - 7 = 31\n31 * 2 = 62\nThe answer is 62", 3),  # no '####' line
    ("23 + 15 = 38\n38 - 7 = 31\n31 * 2 = 62", 2),  # missing final answer: last step
    ("23 + 15 = 38\n#### 38\n38 - 7 = 31\n31 * 2 = 62\n#### 62", 0),  # answer too early
    ("23 + 15 = 38\nsome words here\n38 - 7 = 31\n31 * 2 = 62\n#### 62", 1),  # garbage line
    ("lorem ipsum dolor", 0),  # garbage
    ("23 + 15 = 38\n38 - 7 = 31\n31 * 2 = 62\n#### 62\n#### 62", 2),  # answer twice (both short lines join step 2)
])
def test_wrong_variants_are_caught_at_their_step(text, expected):
    steps = at.segment(text)
    assert at.first_wrong_step(P, steps) == expected, steps
    assert not at.solution_correct(P, text)


def test_right_answer_by_luck_is_an_erroneous_solution():
    # wrong middle step, compensating error: the grader accepts the answer, the checker does not
    text = "23 + 15 = 38\n38 - 7 = 30\n31 * 2 = 62\n#### 62"
    assert grade(text, "62") and at.answer_correct(P, text)
    assert at.first_wrong_step(P, at.segment(text)) == 1


def test_free_whitespace_and_no_steps():
    assert at.solution_correct(P, "23+15=38\n\n38 -  7 = 31\n31 * 2 = 62\n#### 62\n")
    assert at.first_wrong_step(P, []) == 0


def test_agrees_with_project_grader_when_the_chain_is_right(splits):
    for p in splits["val"]:
        lines = p["answer"].split("\n")
        chain = "\n".join(lines[:-1])
        for final, expect in ((lines[-1], True), (f"#### {p['values'][-1] + 1}", False)):
            text = f"{chain}\n{final}"
            assert at.solution_correct(p, text) == grade(text, str(p["values"][-1])) == expect


def test_processbench_records_load(tmp_path):
    good = at.to_processbench(P, at.segment(P["answer"]))
    bad = at.to_processbench(P, at.segment("23 + 15 = 38\n38 - 7 = 32\n32 * 2 = 64\n#### 64"))
    assert (good["label"], bad["label"]) == (-1, 1)
    write_jsonl_atomic(tmp_path / "pb.jsonl", [good, bad])
    samples = load_processbench(tmp_path / "pb.jsonl")
    assert [s.label for s in samples] == [-1, 1] and samples[0].steps == good["steps"]
    with pytest.raises(ValueError):
        at.to_processbench(P, [])


def test_cli_writes_gsm8k_files_that_the_labeling_input_reads(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "nemo_erprm.experiments.arith_task", "--seed", "1", "--train", "40", "--val", "8",
           "--test", "8", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["counts"] == {"train": 40, "val": 8, "test": 8}
    for split in at.SPLITS:
        path = out / f"{split}.jsonl"
        assert manifest["sha256"][f"{split}.jsonl"] == at._sha256(path)
        assert sum(manifest["step_histogram"][split].values()) == manifest["counts"][split]
        rows = read_jsonl(path)
        problems = load_problems(InputConfig(path=str(path), format="gsm8k", id_field="id"), "ки")
        assert [p.id for p in problems] == [r["id"] for r in rows]
        for row, problem in zip(rows, problems):
            assert problem.question == row["question"] and problem.gold == str(row["values"][-1])
            steps = at.segment(problem.solutions[0])
            assert len(steps) == row["num_steps"] + (row["values"][-1] >= 100)
            assert at.first_wrong_step(row, steps) == -1
    first = {p: (out / f"{p}.jsonl").read_bytes() for p in at.SPLITS}
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)  # rerun: same bytes
    assert {p: (out / f"{p}.jsonl").read_bytes() for p in at.SPLITS} == first


def test_cli_bad_counts_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nemo_erprm.experiments.arith_task", "--seed", "1", "--train", "-1",
                        "--val", "1", "--test", "1", "--out", str(tmp_path / "d")], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--train must be >= 0" in r.stderr and "Traceback" not in r.stderr


def test_a_long_answer_line_is_its_own_step():
    p = _problem(50, [("*", 3), ("+", 10)])  # 50 * 3 = 150 / 150 + 10 = 160 / #### 160
    assert at.segment(p["answer"])[-1] == "#### 160"
    assert at.first_wrong_step(p, at.segment(p["answer"])) == -1
    assert at.first_wrong_step(p, at.segment(p["answer"].replace("#### 160", "#### 170"))) == 2
