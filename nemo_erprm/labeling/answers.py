"""Final-answer extraction from a model response or a reference solution."""

from __future__ import annotations

import re

# Markers that introduce a final answer, in the order of preference when several occur:
# a \boxed{} is the most explicit, then GSM8K's "####", then prose markers.
_HASH_ANSWER = re.compile(r"####\s*(.+?)\s*(?:$|\n)")
_THE_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is\s*:?\s*(.+?)\s*(?:$|\n)")
_A_COLON = re.compile(r"(?:^|\n)\s*A\s*:\s*(.+?)\s*(?:$|\n)")
_MARKERS = (("nswer is", _THE_ANSWER_IS), ("A", _A_COLON))


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``), braces balanced."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    name_len = len("\\boxed") if rest.startswith("\\boxed") else len("\\fbox")
    body = rest[name_len:]
    if body.startswith(" ") and not body.lstrip().startswith("{"):
        # "\boxed 5" form: the answer runs to the next whitespace or "$".
        match = re.match(r"\s+([^\s$]+)", body)
        return match.group(1) if match else None
    body = body.lstrip()
    if not body.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return body[1:i].strip()
    return None  # unbalanced: the response was cut off inside the box


def _clean_tail(answer: str) -> str:
    answer = answer.strip()
    # "The answer is: $18$." -> "18"; keep inner "$" of e.g. "\$5" for the normaliser.
    answer = answer.rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def extract_answer(text: str) -> str | None:
    """Return the final answer written in ``text``, or ``None`` when there is none.

    Recognised, by preference: the last ``\\boxed{...}``; GSM8K's ``#### N``;
    ``The answer is: X``; a final ``A: N`` line. For the prose markers the last occurrence
    wins. A ``\\boxed{}`` inside the "answer is" clause is unwrapped.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None and boxed != "":
        return boxed
    hashes = text.rfind("####")
    if hashes >= 0:  # GSM8K style; the last "####" wins
        match = _HASH_ANSWER.match(text, hashes)
        if match:
            answer = _clean_tail(match.group(1))
            return answer if answer else None
    for marker, pattern in _MARKERS:
        if marker not in text:  # cheap test before scanning with the regex
            continue
        matches = pattern.findall(text)
        if matches:
            answer = _clean_tail(matches[-1])
            return answer if answer else None
    return None
