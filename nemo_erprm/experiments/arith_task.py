"""Seeded multi-step arithmetic word problems whose every step can be checked exactly.

A problem is a start value and 2-5 operations told as a story::

    Tom has 23 apples. He buys 15 more. He gives away 7. Then the number of apples doubles.
    How many apples does Tom have now?

Its reference solution states one equation per line, each on the previous value, then the
answer in GSM8K form::

    23 + 15 = 38
    38 - 7 = 31
    31 * 2 = 62
    #### 62

Files are GSM8K-layout JSONL (``question``, ``answer``), read by the labeling input
``format: gsm8k`` and ``tools/best_of_n.py --problems-format gsm8k``, plus the ground truth
(``id``, ``start``, ``ops``, ``values``, ``num_steps``, ``split``).

Two notions of "correct" are used, on purpose:

- :func:`first_wrong_step` / :func:`solution_correct` check every step exactly (the equation
  chain and a final ``#### N``). ProcessBench labels come from it: a solution that reaches the
  right number through a wrong step counts as erroneous.
- Best-of-N accuracy and the labeling rollouts grade the final answer only, with the
  project's grader (:func:`nemo_erprm.labeling.grading.grade`). A solution can have the
  right answer by luck with a wrong step; then the two disagree, by design.

Run ``python -m nemo_erprm.experiments.arith_task --seed S --train N --val N --test N --out DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.grading import grade
from nemo_erprm.labeling.segmentation import SegmentationConfig, split_steps

# How the project segments a solution (labeling defaults): with min_chars=8 the short
# "#### N" line joins the step before it, so one step may hold several lines.
SEGMENTATION = SegmentationConfig(rule="newline", min_chars=8)
SPLITS = ("train", "val", "test")
MAX_VALUE = 999
START_RANGE = (2, 60)
OPERAND_RANGE = (2, 40)

# (name, subject pronoun, possessive)
_PEOPLE = [("Tom", "He", "his"), ("Anna", "She", "her"), ("Ravi", "He", "his"), ("Mia", "She", "her"),
           ("Leo", "He", "his"), ("Sara", "She", "her"), ("Omar", "He", "his"), ("Lena", "She", "her")]
_OBJECTS = ["apples", "marbles", "stamps", "coins", "books", "stickers", "shells", "cards"]
# Phrasings per operation; {n} operand, {who} subject (name or pronoun), {pos} possessive, {obj} plural object.
_PHRASES: dict[str, list[str]] = {
    "+": ["{who} buys {n} more.", "{who} finds {n} more {obj}.", "Then {who_l} gets {n} more {obj}.",
          "A friend gives {who_obj} {n} {obj}."],
    "-": ["{who} gives away {n}.", "{who} loses {n} {obj}.", "Then {who_l} sells {n} of them.",
          "{who} gives {n} {obj} to a friend."],
    "*2": ["Then the number of {obj} doubles.", "{who} doubles {pos} {obj}."],
    "*3": ["Then the number of {obj} triples.", "{who} triples {pos} {obj}."],
    "/2": ["{who} gives half of {pos} {obj} away.", "Then {who_l} loses half of {pos} {obj}."],
}
_QUESTIONS = ["How many {obj} does {name} have now?", "How many {obj} does {name} have in the end?"]

EQUATION = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")  # one step line: a op b = c


def _allowed_ops(value: int) -> list[tuple[str, int, float]]:
    """(op, operand, weight) choices that keep the next value an integer in [1, MAX_VALUE]."""
    lo, hi = OPERAND_RANGE
    ops: list[tuple[str, int, float]] = []
    if value + lo <= MAX_VALUE:
        ops.append(("+", 0, 0.35))
    if value - lo >= 1:
        ops.append(("-", 0, 0.35))
    if value * 2 <= MAX_VALUE:
        ops.append(("*", 2, 0.12))
    if value * 3 <= MAX_VALUE:
        ops.append(("*", 3, 0.08))
    if value % 2 == 0 and value >= 4:
        ops.append(("/", 2, 0.1))
    return ops


def apply_op(value: int, op: str, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    if op == "/":
        if value % operand:
            raise ValueError(f"{value} / {operand} is not exact")
        return value // operand
    raise ValueError(f"unknown operation {op!r}")


def _sample_ops(rng: random.Random, start: int, num_steps: int) -> tuple[list[list[Any]], list[int]]:
    lo, hi = OPERAND_RANGE
    ops, values = [], [start]
    for _ in range(num_steps):
        value = values[-1]
        choices = _allowed_ops(value)
        op, operand, _ = rng.choices(choices, weights=[w for *_, w in choices])[0]
        if op == "+":
            operand = rng.randint(lo, min(hi, MAX_VALUE - value))
        elif op == "-":
            operand = rng.randint(lo, min(hi, value - 1))
        ops.append([op, operand])
        values.append(apply_op(value, op, operand))
    return ops, values


def _phrase(rng: random.Random, op: str, operand: int, person: tuple[str, str, str], obj: str, first: bool) -> str:
    name, pronoun, pos = person
    key = op if op in "+-" else f"{op}{operand}"
    template = rng.choice(_PHRASES[key])
    who = name if first and rng.random() < 0.5 else pronoun
    who_obj = "him" if pronoun == "He" else "her"
    return template.format(n=operand, who=who, who_l=who if who == name else who.lower(), who_obj=who_obj,
                           pos=pos, obj=obj)


def render_question(rng: random.Random, start: int, ops: Sequence[Sequence[Any]]) -> str:
    person = rng.choice(_PEOPLE)
    obj = rng.choice(_OBJECTS)
    parts = [f"{person[0]} has {start} {obj}."]
    parts += [_phrase(rng, op, operand, person, obj, i == 0) for i, (op, operand) in enumerate(ops)]
    parts.append(rng.choice(_QUESTIONS).format(obj=obj, name=person[0]))
    return " ".join(parts)


def equation(values: Sequence[int], ops: Sequence[Sequence[Any]], k: int) -> str:
    """The reference text of step ``k``: ``"<value k> <op> <operand> = <value k+1>"``."""
    op, operand = ops[k]
    return f"{values[k]} {op} {operand} = {values[k + 1]}"


def reference_solution(values: Sequence[int], ops: Sequence[Sequence[Any]]) -> str:
    lines = [equation(values, ops, k) for k in range(len(ops))]
    return "\n".join(lines + [f"#### {values[-1]}"])


def make_problem(rng: random.Random, num_steps: int, pid: str, split: str) -> dict[str, Any]:
    start = rng.randint(*START_RANGE)
    ops, values = _sample_ops(rng, start, num_steps)
    return {
        "id": pid,
        "question": render_question(rng, start, ops),
        "answer": reference_solution(values, ops),
        "start": start,
        "ops": ops,
        "values": values,
        "num_steps": num_steps,
        "split": split,
    }


def _key(problem: dict[str, Any]) -> tuple:
    return (problem["start"], tuple((op, n) for op, n in problem["ops"]))


def make_splits(seed: int, n_train: int, n_val: int, n_test: int, min_steps: int = 2,
                max_steps: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Three disjoint splits: no question text and no (start, ops) chain occurs twice.

    Each split draws from its own stream seeded by (seed, split), and test is drawn first, then
    val, then train (which skips anything already taken): the test and validation problems of
    a seed do not change when the training split grows.
    """
    if not 1 <= min_steps <= max_steps:
        raise ConfigError(f"min_steps/max_steps must satisfy 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n < 0:
            raise ConfigError(f"--{name} must be >= 0, got {n}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    seen_keys: set[tuple] = set()
    seen_questions: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("test", "val", "train"):
        rng = random.Random(f"arith:{seed}:{split}")
        problems: list[dict[str, Any]] = []
        attempts = 0
        while len(problems) < counts[split]:
            attempts += 1
            if attempts > 50 * counts[split] + 1000:
                raise ConfigError(f"could not draw {counts[split]} distinct {split} problems; lower the counts")
            num_steps = rng.randint(min_steps, max_steps)
            problem = make_problem(rng, num_steps, f"arith-s{seed}-{split}-{len(problems):06d}", split)
            if _key(problem) in seen_keys or problem["question"] in seen_questions:
                continue
            seen_keys.add(_key(problem))
            seen_questions.add(problem["question"])
            problems.append(problem)
        out[split] = problems
    return {split: out[split] for split in SPLITS}


# ---------------------------------------------------------------------------------------------
# Exact step checking
# ---------------------------------------------------------------------------------------------

def segment(text: str) -> list[str]:
    """Steps of a solution text as the project's labeling and evaluation see them."""
    return split_steps(text, SEGMENTATION)


def first_wrong_step(problem: dict[str, Any], steps: Sequence[str]) -> int:
    """Index of the first wrong step, or -1 when every step is right.

    Every non-blank line of a step must be either the next equation of the true chain
    (left operand = previous true value, the question's operation and operand, the right
    result; whitespace around tokens is free) or, after the last equation only, ``#### N``
    with N the true answer (as the project's grader reads it). Unparseable text, an extra
    equation, an answer given early or twice make their step wrong; a solution that stops
    before its final answer is wrong at its last step. No steps at all: 0.
    """
    values, ops = problem["values"], problem["ops"]
    gold = str(values[-1])
    done_equations, answered = 0, False
    for index, step in enumerate(steps):
        for line in step.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("####"):
                ok = not answered and done_equations == len(ops) and grade(line, gold)
                answered = True
            else:
                match = EQUATION.match(line)
                ok = bool(match) and not answered and done_equations < len(ops)
                if ok:
                    a, op, b, c = match.groups()  # type: ignore[union-attr]
                    want_op, want_b = ops[done_equations]
                    ok = (int(a), op, int(b), int(c)) == (
                        values[done_equations], want_op, want_b, values[done_equations + 1])
                done_equations += 1
            if not ok:
                return index
    if not steps:
        return 0
    return -1 if answered else len(steps) - 1


def solution_correct(problem: dict[str, Any], text: str) -> bool:
    """Whether every step of ``text`` is right (exact chain and final answer)."""
    return first_wrong_step(problem, segment(text)) == -1


def answer_correct(problem: dict[str, Any], text: str) -> bool:
    """Final answer only, by the project's grader (what Best-of-N accuracy counts)."""
    return grade(text, str(problem["values"][-1]))


def to_processbench(problem: dict[str, Any], steps: Sequence[str]) -> dict[str, Any]:
    """A ProcessBench record (``nemo_erprm/eval/processbench.py``) with the exact first error."""
    if not steps:
        raise ValueError(f"problem {problem['id']}: a ProcessBench record needs at least one step")
    return {"id": problem["id"], "problem": problem["question"], "steps": list(steps),
            "label": first_wrong_step(problem, steps)}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_splits(out: str | os.PathLike, seed: int, n_train: int, n_val: int, n_test: int,
                 min_steps: int = 2, max_steps: int = 5) -> dict[str, Any]:
    """Write ``train/val/test.jsonl`` (each atomically) and then ``manifest.json``; return the manifest.

    The manifest is written last, so its presence means the three files are complete.
    """
    from nemo_erprm.jsonl import write_jsonl_atomic

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    splits = make_splits(seed, n_train, n_val, n_test, min_steps, max_steps)
    manifest: dict[str, Any] = {"generator": "nemo_erprm.experiments.arith_task", "seed": seed,
                                "min_steps": min_steps, "max_steps": max_steps,
                                "counts": {}, "sha256": {}, "step_histogram": {}}
    for split, problems in splits.items():
        path = out / f"{split}.jsonl"
        write_jsonl_atomic(path, problems)
        manifest["counts"][split] = len(problems)
        manifest["sha256"][f"{split}.jsonl"] = _sha256(path)
        hist = Counter(p["num_steps"] for p in problems)
        manifest["step_histogram"][split] = {str(k): hist[k] for k in sorted(hist)}
    tmp = out / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    from nemo_erprm.errors import ArgumentParser, run_reporting_errors

    parser = ArgumentParser(prog="arith_task", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--train", type=int, required=True, help="number of training problems")
    parser.add_argument("--val", type=int, required=True, help="number of validation problems")
    parser.add_argument("--test", type=int, required=True, help="number of test problems")
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--out", required=True, help="folder for train/val/test.jsonl and manifest.json")
    args = parser.parse_args(argv)

    def body() -> int:
        manifest = write_splits(args.out, args.seed, args.train, args.val, args.test, args.min_steps, args.max_steps)
        print(json.dumps({"out": str(args.out), "counts": manifest["counts"]}))
        return 0

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
