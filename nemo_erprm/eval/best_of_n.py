"""Best-of-N accuracy curves: for N in {1, 2, 4, ..., N_max}, every method's accuracy over
subsets of N candidates per problem, with a 95% bootstrap interval over problems.

N runs up to the largest N that at least half of the problems reach (``n_max`` up to the most
candidates of any problem); each point averages over the problems with at least N candidates,
and says how many (``problems``).

Subsets: all of them when a problem has at most ``subsets`` of size N (exact), else
``subsets`` random ones (seeded). Per problem the accuracy is the mean over its subsets;
the curve point is the mean over problems; the interval resamples problems.

Methods: ``random`` (exact: the mean correctness of the subset), ``oracle`` (pass@N),
``majority`` (majority vote on final answers, equal values grouped as the grader compares them:
``20.50`` and ``20.5`` are one answer), and per aggregation ``prm_<agg>`` (the PRM's
pick) and ``weighted_<agg>`` (PRM-weighted majority vote).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence

from nemo_erprm.eval.aggregate import aggregate, oracle_accuracy, pick_accuracy, random_accuracy, vote_accuracy
from nemo_erprm.eval.candidates import BoNProblem, vote_key


@dataclass
class CurvePoint:
    n: int
    accuracy: float
    low: float
    high: float
    problems: int = 0  # problems with at least n candidates: the ones this point averages


def n_values(n_max: int) -> list[int]:
    out, n = [], 1
    while n < n_max:
        out.append(n)
        n *= 2
    return out + [n_max]


def subsets_of(k: int, n: int, limit: int, rng: random.Random) -> list[tuple[int, ...]]:
    if math.comb(k, n) <= limit:
        return list(itertools.combinations(range(k), n))
    return [tuple(sorted(rng.sample(range(k), n))) for _ in range(limit)]


def method_names(aggregations: Sequence[str], with_scores: bool) -> list[str]:
    names = ["random", "oracle", "majority"]
    if with_scores:
        names += [f"prm_{a}" for a in aggregations] + [f"weighted_{a}" for a in aggregations]
    return names


def subset_accuracy(method: str, problem: BoNProblem, idx: Sequence[int],
                    candidate_scores: Optional[dict[str, list[float]]]) -> float:
    correct = [bool(problem.candidates[i].correct) for i in idx]
    if method == "random":
        return random_accuracy(correct)
    if method == "oracle":
        return oracle_accuracy(correct)
    answers = [vote_key(problem.candidates[i].answer) for i in idx]  # grouped by the grader's equality
    if method == "majority":
        return vote_accuracy(answers, correct)
    kind, agg = method.split("_", 1)
    values = [candidate_scores[agg][i] for i in idx]
    if kind == "prm":
        return pick_accuracy(values, correct)
    return vote_accuracy(answers, correct, weights=values)


def bootstrap_interval(per_problem: Sequence[float], samples: int, seed: int) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the mean over ``samples`` resamplings of the problems."""
    import numpy as np

    values = np.asarray(per_problem, dtype=np.float64)
    if samples <= 0 or len(values) < 2:
        return float(values.mean()), float(values.mean())
    idx = np.random.default_rng(seed).integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def best_of_n_curves(
    problems: Sequence[BoNProblem],
    step_scores: Optional[Sequence[Sequence[Sequence[float]]]],
    aggregations: Sequence[str],
    n_max: Optional[int] = None,
    subsets: int = 200,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, list[CurvePoint]]:
    """``step_scores[p][c]``: the step scores of candidate c of problem p (None: no PRM).
    Problems without a known correctness for every candidate are rejected by the caller."""
    most = max(len(p.candidates) for p in problems)
    n_max = min(n_max, most) if n_max else largest_n(problems)
    agg_scores = None
    if step_scores is not None:
        agg_scores = [{a: [aggregate(s, a) for s in cands] for a in aggregations} for cands in step_scores]
    methods = method_names(aggregations, step_scores is not None)
    curves: dict[str, list[CurvePoint]] = {m: [] for m in methods}
    for n in n_values(n_max):
        rng = random.Random(f"{seed}:{n}")
        counted = [j for j, p in enumerate(problems) if len(p.candidates) >= n]  # fewer: no subset of size n
        chosen = {j: subsets_of(len(problems[j].candidates), n, subsets, rng) for j in counted}
        for m in methods:
            per_problem = [
                sum(subset_accuracy(m, problems[j], idx, agg_scores[j] if agg_scores else None) for idx in chosen[j])
                / len(chosen[j])
                for j in counted
            ]
            mean = sum(per_problem) / len(per_problem)
            low, high = bootstrap_interval(per_problem, bootstrap, seed * 1000 + n)
            curves[m].append(CurvePoint(n, mean, low, high, len(counted)))
    return curves


def largest_n(problems: Sequence[BoNProblem]) -> int:
    """The largest N with at least half of the problems (so a curve point never rests on a
    few problems with unusually many candidates)."""
    counts = sorted((len(p.candidates) for p in problems), reverse=True)
    return counts[(len(counts) - 1) // 2]


def coverage_notes(problems: Sequence[BoNProblem], curves: dict[str, list[CurvePoint]],
                   n_max_requested: Optional[int]) -> list[str]:
    """Console lines saying which N values average over fewer than all problems, and why the
    curve stops where it does."""
    points = next(iter(curves.values()))
    total, notes = len(problems), []
    for p in points:
        if p.problems < total:
            notes.append(f"N={p.n}: {p.problems} of {total} problems count ({total - p.problems} have fewer than "
                         f"{p.n} candidates)")
    top = points[-1].n
    most = max(len(p.candidates) for p in problems)
    if n_max_requested and n_max_requested > top:
        notes.append(f"--n-max {n_max_requested}: curves stop at N={top} (no problem has more than {most} candidates)")
    elif top < most:
        notes.append(f"curves stop at N={top}: fewer than half of the problems have more candidates "
                     f"(up to {most}; --n-max {most} goes further)")
    return notes
