"""Best-of-N candidate files: one problem per line, in any of three layouts.

- ``bon4`` (``../shared/data/bon/gsm8k_test_4_model_solutions.jsonl``): ``question``,
  ``ground_truth`` (a GSM8K solution ending in ``A: N`` or ``#### N``), and one object per
  model ``{"solution", "is_correct"}`` under any other key.
- ``rlhflow`` (RLHFlow test sets): ``prompt``, ``answers`` (list of solutions), ``label``
  (list of 0/1, optional), gold in ``gt``, ``answer`` or ``gold``.
- ``ours``: ``question``, ``gold`` (optional), ``candidates``: a list of solution strings or
  of ``{"solution" | "steps", "label"?, "source"?}``; optional ``id``.

Each candidate is split into steps with the labeling stage's segmentation (GSM8K calculator
annotations ``<<...>>`` removed by default, as in the labeled training data), its final
answer extracted, and its correctness **recomputed with our grader** whenever the gold
answer is known; given labels are kept to report disagreements. Errors name file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from functools import lru_cache
from typing import Any, Optional

from nemo_erprm.jsonl import RecordError, iter_jsonl
from nemo_erprm.labeling.answers import extract_answer
from nemo_erprm.labeling.grading import grade_answer, normalize_answer, parse_number
from nemo_erprm.labeling.segmentation import SegmentationConfig, StepTagError, split_steps

LAYOUTS = ("auto", "bon4", "rlhflow", "ours")


@lru_cache(maxsize=1 << 16)
def vote_key(answer: Optional[str]) -> Optional[str]:
    """The key majority votes group answers by: the grader's numeric value for numbers (so
    ``20.50``/``20.5`` and ``12.0``/``12`` are one answer, to the grader's 6 decimals), else the
    normalised text."""
    if answer is None:
        return None
    value = parse_number(answer)
    if value is None:
        return answer
    try:
        return f"={round(float(value), 6)!r}"
    except OverflowError:  # beyond float: the exact value
        return f"={value}"
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_GOLD_FIELDS = ("gold", "gt", "answer")


@dataclass
class Candidate:
    text: str
    steps: list[str]
    source: str
    answer: Optional[str]  # extracted final answer, normalised (None: no answer found)
    correct: Optional[bool]  # graded against gold, else the given label, else None
    given_label: Optional[bool] = None


@dataclass
class BoNProblem:
    id: str
    question: str
    gold: Optional[str]
    candidates: list[Candidate] = field(default_factory=list)
    line: int = 0


@dataclass
class LoadReport:
    layout: str
    problems: int = 0
    candidates: int = 0
    graded: int = 0  # correctness from our grader
    label_disagreements: int = 0  # our grade != the label given in the file
    disagreement_examples: list[dict[str, Any]] = field(default_factory=list)
    # candidates whose text held the step tag (real outputs, degenerate ones especially, can
    # contain it): scored with the tag removed instead of aborting the run
    step_tag_neutralised: int = 0
    step_tag_examples: list[dict[str, Any]] = field(default_factory=list)


def _without_step_tag(c: dict[str, Any], step_tag: str, report: LoadReport, line: int) -> dict[str, Any]:
    """``c`` with the step tag removed from its text or steps, counted in ``report``."""
    text, steps = c.get("text"), c.get("steps")
    held = (isinstance(text, str) and step_tag in text) or (
        isinstance(steps, list) and any(step_tag in str(s) for s in steps))
    if not held:
        return c
    report.step_tag_neutralised += 1
    if len(report.step_tag_examples) < 10:
        report.step_tag_examples.append({"line": line, "source": c.get("source")})
    c = dict(c)
    if isinstance(text, str):
        c["text"] = text.replace(step_tag, "")
    if isinstance(steps, list):
        c["steps"] = [str(s).replace(step_tag, "") for s in steps]
    return c


def detect_layout(record: dict[str, Any]) -> str:
    if "candidates" in record:
        return "ours"
    if "prompt" in record and "answers" in record:
        return "rlhflow"
    if "question" in record and "ground_truth" in record:
        return "bon4"
    raise ValueError(f"unknown candidate layout with fields {sorted(record)}; expected {LAYOUTS[1:]}")


def _raw_candidates(record: dict[str, Any], layout: str) -> tuple[str, Optional[str], list[dict[str, Any]]]:
    """(question, gold text or None, [{"text" | "steps", "label", "source"}])."""
    if layout == "bon4":
        gold_text = record["ground_truth"]
        gold = extract_answer(gold_text) if isinstance(gold_text, str) else None
        if gold is None:
            raise ValueError("no final answer ('A: N' or '#### N') in 'ground_truth'")
        raw = [{"text": v["solution"], "label": v.get("is_correct"), "source": k}
               for k, v in record.items() if isinstance(v, dict) and "solution" in v]
        return record["question"], gold, raw
    if layout == "rlhflow":
        answers, labels = record["answers"], record.get("label")
        if not isinstance(answers, list):
            raise ValueError("'answers' must be a list of solutions")
        if labels is not None and len(labels) != len(answers):
            raise ValueError(f"'label' has {len(labels)} entries for {len(answers)} answers")
        gold = next((str(record[f]) for f in _GOLD_FIELDS if record.get(f) is not None), None)
        raw = [{"text": a, "label": None if labels is None else bool(labels[i]), "source": str(i)}
               for i, a in enumerate(answers)]
        return record["prompt"], gold, raw
    if layout == "ours":
        if not isinstance(record["candidates"], list):
            raise ValueError("'candidates' must be a list of solutions")
        raw = []
        for i, c in enumerate(record["candidates"]):
            if isinstance(c, str):
                raw.append({"text": c, "label": None, "source": str(i)})
            elif isinstance(c, dict) and ("solution" in c or "steps" in c):
                raw.append({"text": c.get("solution"), "steps": c.get("steps"), "label": c.get("label"),
                            "source": str(c.get("source", i))})
            else:
                raise ValueError(f"candidate {i} must be a string or an object with 'solution' or 'steps'")
        gold = record.get("gold")
        return record["question"], None if gold is None else str(gold), raw
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")


def load_candidates(
    path: str | Path,
    layout: str = "auto",
    segmentation: SegmentationConfig | None = None,
    strip_calculator: bool = True,
    limit: Optional[int] = None,
) -> tuple[list[BoNProblem], LoadReport]:
    """All problems of a candidate file, validated and graded; errors name ``path:line``."""
    seg = segmentation or SegmentationConfig()
    problems: list[BoNProblem] = []
    report = LoadReport(layout=layout)
    for line, record in iter_jsonl(path):
        if limit is not None and len(problems) >= limit:
            break
        try:
            this_layout = detect_layout(record) if layout == "auto" else layout
            report.layout = this_layout
            question, gold, raw = _raw_candidates(record, this_layout)
            if not isinstance(question, str) or not question.strip():
                raise ValueError("the question is missing or empty")
            if not raw:
                raise ValueError("no candidate solutions")
            candidates = []
            for c in raw:
                c = _without_step_tag(c, seg.step_tag, report, line)
                if c.get("steps") is not None:
                    steps = [str(s) for s in c["steps"]]
                    text = "".join(steps)
                else:
                    text = c["text"]
                    if not isinstance(text, str):
                        raise ValueError(f"candidate {c['source']}: the solution must be a string")
                    if strip_calculator:
                        text = _CALCULATOR.sub("", text)
                    steps = split_steps(text, seg)
                answer = extract_answer(text)
                label = None if c.get("label") is None else bool(c["label"])
                correct = grade_answer(answer, gold) if gold is not None else label
                candidates.append(Candidate(text=text, steps=steps, source=c["source"],
                                            answer=normalize_answer(answer) if answer is not None else None,
                                            correct=correct, given_label=label))
                report.candidates += 1
                if gold is not None:
                    report.graded += 1
                    if label is not None and label != correct:
                        report.label_disagreements += 1
                        if len(report.disagreement_examples) < 10:
                            report.disagreement_examples.append(
                                {"line": line, "source": c["source"], "answer": answer, "gold": gold, "given": label})
        except StepTagError as e:
            raise RecordError(path, line, str(e)) from None
        except (KeyError, TypeError, ValueError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise RecordError(path, line, f"bad candidate record: {detail}") from None
        problems.append(BoNProblem(id=str(record.get("id", f"{Path(path).stem}-{line:06d}")), question=question,
                                   gold=gold, candidates=candidates, line=line))
    if not problems:
        raise RecordError(path, 0, "no problems in file")
    report.problems = len(problems)
    return problems, report
