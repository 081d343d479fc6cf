"""Step scores -> one score per candidate, and candidate selection rules.

Aggregations: ``min`` (the paper's), ``last``, ``mean``, ``product``, ``geomean``
(geometric mean). Selection: the PRM's pick (argmax; ties shared), PRM-weighted
majority vote (sum of candidate scores per distinct final answer), plain majority vote,
random pick (expected accuracy, exact) and oracle (pass@N).

Every selection returns the *expected* accuracy of its choice: ties between candidates or
answers are broken uniformly at random, so the number does not depend on candidate order.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": lambda s: min(s),
    "last": lambda s: s[-1],
    "mean": lambda s: sum(s) / len(s),
    "product": lambda s: math.prod(s),
    "geomean": lambda s: math.exp(sum(math.log(max(x, 1e-12)) for x in s) / len(s)),
}


def aggregate(step_scores: Sequence[float], how: str) -> float:
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; one of {sorted(AGGREGATIONS)}")
    if not step_scores:
        return 0.0  # a candidate with no steps is never preferred
    return float(AGGREGATIONS[how](step_scores))


def pick_accuracy(values: Sequence[float], correct: Sequence[bool], tol: float = 1e-12) -> float:
    """Expected accuracy of picking the argmax of ``values`` (ties shared)."""
    top = max(values)
    tied = [c for v, c in zip(values, correct) if v >= top - tol]
    return sum(tied) / len(tied)


def vote_accuracy(answers: Sequence[Optional[str]], correct: Sequence[bool],
                  weights: Optional[Sequence[float]] = None, tol: float = 1e-12) -> float:
    """Expected accuracy of the answer with the largest total weight (count when no weights).
    Candidates without a final answer do not vote; if none has one, a random candidate."""
    totals: dict[str, float] = {}
    right: dict[str, bool] = {}
    for i, (a, c) in enumerate(zip(answers, correct)):
        if a is None:
            continue
        totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else weights[i])
        right[a] = right.get(a, False) or bool(c)
    if not totals:
        return sum(correct) / len(correct)
    top = max(totals.values())
    tied = [right[a] for a, t in totals.items() if t >= top - tol]
    return sum(tied) / len(tied)


def random_accuracy(correct: Sequence[bool]) -> float:
    return sum(correct) / len(correct)


def oracle_accuracy(correct: Sequence[bool]) -> float:
    return float(any(correct))
