"""Step segmentation: the one place where a solution becomes steps.

Labeling, training data, evaluation and serving all call :func:`split_steps` and
:func:`join_with_tags`, so a step means the same thing at train and inference time.

Steps keep their exact text, separators included: ``"".join(steps) == solution`` always
holds, so a prefix of steps is exactly a prefix of the solution string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from nemo_erprm.errors import ConfigError, ERPRMError

DEFAULT_STEP_TAG = "ки"

_RULES = ("newline", "blank_line", "sentence")
# A sentence ends at . ! or ? followed by whitespace (so "3.5" never splits), unless the
# word before the period is a common abbreviation; newlines always end a sentence too.
_SENTENCE_END = re.compile(r"[.!?]+\s+|\n+")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "vs", "st", "e.g", "i.e", "etc", "approx", "no"}


class StepTagError(ERPRMError, ValueError):
    """Raised when a step text already contains the step tag."""


@dataclass
class SegmentationConfig:
    """How a solution is split into steps.

    rule: ``newline`` (every line is a step), ``blank_line`` (paragraphs) or ``sentence``.
    min_chars: a step with fewer non-space characters than this is merged into the previous
        step (the first step merges forward), so "#### 72" or "= 5." do not stand alone.
    step_tag: the marker inserted after each step for the PRM; it may never occur in text.
    """

    rule: str = "newline"
    min_chars: int = 8
    step_tag: str = DEFAULT_STEP_TAG

    def __post_init__(self) -> None:
        if self.rule not in _RULES:
            raise ConfigError(f"segmentation.rule must be one of {_RULES}, got {self.rule!r}")
        if self.min_chars < 0:
            raise ConfigError(f"segmentation.min_chars must be >= 0, got {self.min_chars}")
        check_step_tag(self.step_tag, "segmentation.step_tag")


def check_step_tag(step_tag: object, key: str) -> None:
    """Refuse a step tag that is not a non-blank string (``key`` names the setting): an empty
    tag occurs everywhere in every text, a blank one inside every step."""
    if not isinstance(step_tag, str) or not step_tag.strip():
        raise ConfigError(f"{key} must be a non-blank string, got {step_tag!r}")


def _split_points(text: str, rule: str) -> list[int]:
    """End offsets (exclusive) of each raw piece; separators stay with the piece before."""
    if rule == "newline":
        pattern = re.compile(r"\n+")
    elif rule == "blank_line":
        pattern = re.compile(r"\n[ \t]*\n\s*")
    else:
        pattern = _SENTENCE_END
    ends = []
    for m in pattern.finditer(text):
        if m.end() >= len(text):
            continue
        if rule == "sentence" and m.group().startswith("."):
            word = re.search(r"([\w.]+)$", text[: m.start()])
            if word and word.group(1).lower() in _ABBREVIATIONS:
                continue
        ends.append(m.end())
    return ends + [len(text)]


def check_no_tag(text: str, step_tag: str, where: str = "text") -> None:
    """Raise :class:`StepTagError` if ``step_tag`` occurs in ``text``."""
    if step_tag in text:
        pos = text.index(step_tag)
        snippet = text[max(0, pos - 20): pos + len(step_tag) + 20].replace("\n", "\\n")
        raise StepTagError(
            f"the step tag {step_tag!r} occurs inside the {where} (at char {pos}: ...{snippet}...); "
            "remove it from the data or choose another segmentation.step_tag"
        )


def split_steps(solution: str, config: SegmentationConfig | None = None) -> list[str]:
    """Split ``solution`` into steps whose concatenation is exactly ``solution``.

    Leading whitespace of the solution stays with the first step; a piece that is only
    whitespace never becomes a step of its own.
    """
    config = config or SegmentationConfig()
    check_no_tag(solution, config.step_tag, "solution")
    if not solution.strip():
        return []
    pieces: list[str] = []
    start = 0
    for end in _split_points(solution, config.rule):
        pieces.append(solution[start:end])
        start = end
    def is_short(text: str) -> bool:
        return len(text.strip()) < max(config.min_chars, 1)

    steps: list[str] = []
    for piece in pieces:
        # A short piece joins the step before it; a short first step absorbs what follows.
        if steps and (is_short(piece) or is_short(steps[-1])):
            steps[-1] += piece
        else:
            steps.append(piece)
    assert "".join(steps) == solution
    return steps


def join_with_tags(steps: Sequence[str], step_tag: str = DEFAULT_STEP_TAG) -> str:
    """Render steps for the PRM: each step, stripped of trailing whitespace, then `` <tag>``.

    Steps are separated by a newline, so the output reads like Math-Shepherd data:
    ``"step one ки\\nstep two ки"``. The tag count equals ``len(steps)``.
    """
    out = []
    for i, step in enumerate(steps):
        check_no_tag(step, step_tag, f"step {i}")
        out.append(f"{step.strip()} {step_tag}")
    return "\n".join(out)


def render_prm_input(question: str, steps: Sequence[str], step_tag: str = DEFAULT_STEP_TAG) -> str:
    """The PRM's input text: ``question`` then the tagged steps (Math-Shepherd / ER-PRM layout).

    ``"<question> step one ки\\nstep two ки"``: one tag per step, each right after its step.
    Training data, evaluation and serving all render through this function.
    """
    check_no_tag(question, step_tag, "question")
    return f"{question.strip()} {join_with_tags(steps, step_tag)}"
