"""Answer equivalence: a numeric fast path, then math-verify for LaTeX, with a cache.

``grade(response, gold)`` extracts the response's final answer and compares it with the
bare gold answer. Most GSM8K answers are plain numbers and are decided by exact rational
arithmetic without touching sympy; everything else goes to math-verify (parse + verify),
bounded by a per-call timeout. Verdicts are cached on the normalised (prediction, gold)
pair, so the thousands of repeated answers produced by N rollouts cost one comparison.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from functools import lru_cache

from nemo_erprm.labeling.answers import extract_answer

logger = logging.getLogger(__name__)

# Seconds per math-verify parse/verify call (signal based: only enforced in the main thread;
# math-verify cannot use SIGALRM elsewhere, so worker threads run without it).
MATH_VERIFY_TIMEOUT_S = 5
CACHE_SIZE = 1 << 16

_UNIT_WORDS = re.compile(
    r"\s*(?:dollars?|cents?|percent|units?|hours?|minutes?|seconds?|days?|weeks?|months?|years?|"
    r"miles?|km|meters?|m|cm|feet|foot|inches?|pounds?|lbs?|kg|g|people|students?|"
    r"apples?|eggs?|cups?|pages?|points?|marbles?|cookies?|[a-z]+s)\.?$",
    re.IGNORECASE,
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|mbox|mathrm|textbf)\{([^{}]*)\}")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_SLASH_FRACTION = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")
_LATEX_FRACTION = re.compile(r"^([+-]?)\\[dt]?frac\{?([+-]?\d+)\}?\{?([+-]?\d+)\}?$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
# "$1,234.50." / "-7" / "12.0": the common GSM8K shape, normalised without the general rules.
_PLAIN_NUMBER = re.compile(r"^\s*\\?\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*\.?\s*$")


def normalize_answer(answer: str) -> str:
    """Surface normalisation shared by the fast path and the cache key.

    Strips math delimiters, ``$``/``\\$`` currency, ``\\%``, degree marks, thousands
    separators, a trailing period and unit words after a number. It never changes the value
    of a well-formed answer.
    """
    s = answer.strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", " ")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = _TEXT_WRAPPER.sub(r"\1", s).strip()
    s = s.rstrip(".").strip()
    s = _THOUSANDS.sub("", s)
    # "18 dollars", "5 apples": drop a trailing unit word after a number.
    match = re.match(r"^([+-]?[\d.]+(?:\s*/\s*\d+)?)\s+[A-Za-z].*$", s)
    if match and _UNIT_WORDS.fullmatch(s[match.end(1):]):
        s = match.group(1)
    return s.strip()


def parse_number(answer: str) -> Fraction | None:
    """Exact value of a plain number (``12``, ``-0.5``, ``3/4``, ``\\frac{3}{4}``), else None."""
    s = answer.replace(" ", "")
    try:
        if s.isdigit() or (s[:1] == "-" and s[1:].isdigit()):
            return Fraction(int(s))  # int() first: far cheaper than parsing the string
        if _NUMBER.match(s):
            return Fraction(s)
        m = _SLASH_FRACTION.match(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
        m = _LATEX_FRACTION.match(s)
        if m:
            num, den = int(m.group(2)), int(m.group(3))
            if den == 0:
                return None
            value = Fraction(num, den)
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _numbers_equal(a: Fraction, b: Fraction) -> bool:
    if a == b:
        return True
    # Decimals written to limited precision (0.333 for 1/3): math-verify rounds floats to
    # 6 places, do the same so both paths agree.
    return round(float(a), 6) == round(float(b), 6)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=CACHE_SIZE)
def _math_verify_parse(expr: str):
    from math_verify import parse

    timeout = MATH_VERIFY_TIMEOUT_S if _main_thread() else None
    # \boxed{} makes math-verify's LaTeX extractor take the whole answer as one expression.
    return parse(f"\\boxed{{{expr}}}", parsing_timeout=timeout)


@lru_cache(maxsize=CACHE_SIZE)
def answers_equivalent(pred: str, gold: str) -> bool:
    """Whether two *normalised* bare answers are mathematically equal (cached)."""
    if pred == gold:
        return True
    pred_num, gold_num = parse_number(pred), parse_number(gold)
    if pred_num is not None and gold_num is not None:
        return _numbers_equal(pred_num, gold_num)
    from math_verify import verify

    gold_parsed = _math_verify_parse(gold)
    pred_parsed = _math_verify_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    timeout = MATH_VERIFY_TIMEOUT_S if _main_thread() else None
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # math-verify raises on pathological inputs; a wrong answer, not a crash
        logger.debug("math-verify failed on %r vs %r", pred, gold, exc_info=True)
        return False


@lru_cache(maxsize=CACHE_SIZE)
def _normalize_cached(answer: str) -> str:
    return normalize_answer(answer)


def grade_answer(pred: str | None, gold: str) -> bool:
    """Compare an already extracted answer with the bare gold answer."""
    if pred is None:  # "no answer" is wrong; the answer "0" is a real answer (reference bug)
        return False
    p, g = _normalize_cached(pred), _normalize_cached(gold)
    if not p or not g:
        return False
    return answers_equivalent(p, g)


def grade(response: str, gold: str) -> bool:
    """True when the final answer in ``response`` equals the bare ``gold`` answer.

    ``gold`` is the bare answer (``"18"``, ``"\\frac{14}{3}"``), not a full solution.
    """
    return grade_answer(extract_answer(response), gold)


def clear_cache() -> None:
    """Forget cached verdicts and parses (used by benchmarks)."""
    answers_equivalent.cache_clear()
    _math_verify_parse.cache_clear()
    _normalize_cached.cache_clear()
