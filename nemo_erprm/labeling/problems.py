"""Labeling input: problems read from JSONL and validated before any generation.

Formats (``input.format``):

- ``gsm8k``: ``{"question", "answer"}`` where ``answer`` is the reference reasoning ending
  in ``#### N`` (GSM8K train/test). Gold = N; the reasoning (calculator annotations
  ``<<...>>`` removed unless ``strip_calculator: false``) is the reference trajectory.
- ``math``: ``{"problem", "solution", "answer"}`` (MATH / MATH500).
- ``generic``: field names from ``question_field``, ``gold_field``, ``solution_field``
  (the solution field may hold a string or a list of strings).
- ``offline``: rollouts done elsewhere; each line is one trajectory
  ``{"question", "gold", "steps": [...], "completions": [[str, ...] per step]}`` or with
  ``"step_rewards": [[0/1, ...] per step]`` instead of completions.

Problem ids come from ``id_field`` when set, else ``<file stem>-<line index>``.
"""

from __future__ import annotations

from nemo_erprm.errors import ConfigError

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nemo_erprm.jsonl import RecordError, iter_jsonl
from nemo_erprm.yaml_config import Range

FORMATS = ("gsm8k", "math", "generic", "offline")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass
class InputConfig:
    """Where the problems come from and how to read them."""

    path: str = "../shared/data/gsm8k/train.jsonl"
    format: str = "gsm8k"
    id_field: str | None = None
    question_field: str = "question"
    gold_field: str = "answer"
    solution_field: str | None = None
    strip_calculator: bool = True
    offset: int = 0
    limit: int | None = None

    NUMBER_RANGES: ClassVar[dict[str, Range]] = {"offset": Range(0), "limit": Range(1, note="null: all")}

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"input.format must be one of {FORMATS}, got {self.format!r}")


@dataclass
class OfflineTrajectory:
    steps: list[str]
    completions: list[list[str]] | None = None
    step_rewards: list[list[float]] | None = None


@dataclass
class Problem:
    id: str
    question: str
    gold: str
    solutions: list[str] = field(default_factory=list)
    offline: list[OfflineTrajectory] = field(default_factory=list)
    source_line: int = 0


def gsm8k_gold(answer: str) -> str | None:
    """The number after ``####`` in a GSM8K answer, commas removed."""
    if "####" not in answer:
        return None
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, line: int) -> Any:
    if key not in obj:
        raise RecordError(path, line, f"missing field {key!r} (fields present: {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(k.__name__ for k in kinds)
        raise RecordError(path, line, f"field {key!r} must be {expected}, got {type(value).__name__}")
    return value


def _parse_line(obj: dict[str, Any], cfg: InputConfig, path: Path, line: int, index: int) -> Problem:
    if cfg.id_field:
        pid = str(_get(obj, cfg.id_field, (str, int), path, line))
    else:
        pid = f"{path.stem}-{index:06d}"
    if cfg.format == "gsm8k":
        question = _get(obj, "question", str, path, line)
        answer = _get(obj, "answer", str, path, line)
        gold = gsm8k_gold(answer)
        if gold is None:
            raise RecordError(path, line, "field 'answer' has no '#### <answer>' line (is this GSM8K?)")
        solution = _CALCULATOR.sub("", answer) if cfg.strip_calculator else answer
        return Problem(pid, question, gold, [solution], source_line=line)
    if cfg.format == "math":
        return Problem(
            pid,
            _get(obj, "problem", str, path, line),
            _get(obj, "answer", str, path, line),
            [_get(obj, "solution", str, path, line)],
            source_line=line,
        )
    question = _get(obj, cfg.question_field if cfg.format == "generic" else "question", str, path, line)
    gold_key = cfg.gold_field if cfg.format == "generic" else "gold"
    gold = _get(obj, gold_key, (str, int, float), path, line)
    gold = str(gold)
    if cfg.format == "generic":
        solutions: list[str] = []
        if cfg.solution_field:
            value = _get(obj, cfg.solution_field, (str, list), path, line)
            solutions = [value] if isinstance(value, str) else list(value)
            if not all(isinstance(s, str) for s in solutions):
                raise RecordError(path, line, f"field {cfg.solution_field!r} must hold strings")
        return Problem(pid, question, gold, solutions, source_line=line)
    # offline
    steps = _get(obj, "steps", list, path, line)
    if not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise RecordError(path, line, "field 'steps' must be a non-empty list of non-empty strings")
    completions = obj.get("completions")
    rewards = obj.get("step_rewards")
    if (completions is None) == (rewards is None):
        raise RecordError(path, line, "an offline record needs exactly one of 'completions' or 'step_rewards'")
    given = completions if completions is not None else rewards
    name = "completions" if completions is not None else "step_rewards"
    if not isinstance(given, list) or len(given) != len(steps):
        raise RecordError(path, line, f"field {name!r} must have one list per step ({len(steps)})")
    for i, per_step in enumerate(given):
        if not isinstance(per_step, list) or not per_step:
            raise RecordError(path, line, f"{name}[{i}] must be a non-empty list")
        if completions is not None and not all(isinstance(c, str) for c in per_step):
            raise RecordError(path, line, f"completions[{i}] must hold strings")
        if rewards is not None and not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1 for r in per_step
        ):
            raise RecordError(path, line, f"step_rewards[{i}] must hold numbers in [0, 1]")
    return Problem(
        pid, question, gold, offline=[OfflineTrajectory(list(steps), completions, rewards)], source_line=line
    )


def load_problems(cfg: InputConfig, step_tag: str) -> list[Problem]:
    """Read and validate every problem of ``cfg.path`` (after offset/limit) up front.

    Raises :class:`RecordError` naming file and line on malformed JSON, a missing or
    mistyped field, a duplicate id, or a step tag inside the question or a solution.
    """
    path = Path(cfg.path)
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, (line, obj) in enumerate(iter_jsonl(path)):
        if index < cfg.offset:
            continue
        if cfg.limit is not None and len(problems) >= cfg.limit:
            break
        problem = _parse_line(obj, cfg, path, line, index)
        if problem.id in seen:
            raise RecordError(path, line, f"duplicate problem id {problem.id!r} (first at line {seen[problem.id]})")
        seen[problem.id] = line
        texts = [("question", problem.question)] + [("solution", s) for s in problem.solutions]
        texts += [(f"steps[{i}]", s) for t in problem.offline for i, s in enumerate(t.steps)]
        for name, text in texts:
            if step_tag in text:
                raise RecordError(
                    path, line, f"the step tag {step_tag!r} occurs in the {name}; choose another segmentation.step_tag"
                )
        problems.append(problem)
    if not problems:
        raise RecordError(path, 0, "no problems to label (empty file, or offset/limit select nothing)")
    return problems
