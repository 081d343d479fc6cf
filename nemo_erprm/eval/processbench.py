"""Step-level evaluation in the ProcessBench format.

Input, one JSON object per line: ``id``, ``problem``, ``steps`` (list of step texts), ``label``
(index of the first wrong step, or -1 when every step is right). The PRM scores every step
(one forward per sample); the predicted first error is the first step scoring below the
threshold (-1 if none). Reported: accuracy on the erroneous samples (predicted index equals
the label), accuracy on the correct samples (predicted -1), and their harmonic mean (F1).

The threshold is chosen on a separate split (``threshold_split``) when given, maximising F1
there; otherwise every threshold of a grid is reported and the best one is marked as chosen
on the test data itself (optimistic).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from nemo_erprm.jsonl import RecordError, iter_jsonl

THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]


@dataclass
class StepSample:
    id: str
    problem: str
    steps: list[str]
    label: int


def load_processbench(path: str | Path) -> list[StepSample]:
    out = []
    for line, rec in iter_jsonl(path):
        try:
            steps, label = rec["steps"], rec["label"]
            if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
                raise ValueError("'steps' must be a non-empty list of strings")
            if not isinstance(label, int) or isinstance(label, bool) or not -1 <= label < len(steps):
                raise ValueError(f"'label' must be -1 or a step index below {len(steps)}, got {label!r}")
            out.append(StepSample(str(rec.get("id", line)), str(rec["problem"]), steps, label))
        except KeyError as e:
            raise RecordError(path, line, f"missing field {e}") from None
        except ValueError as e:
            raise RecordError(path, line, str(e)) from None
    if not out:
        raise RecordError(path, 0, "no samples in file")
    return out


def first_error(scores: Sequence[float], threshold: float) -> int:
    return next((i for i, s in enumerate(scores) if s < threshold), -1)


def step_metrics(samples: Sequence[StepSample], scores: Sequence[Sequence[float]], threshold: float) -> dict:
    err = [first_error(sc, threshold) == s.label for s, sc in zip(samples, scores) if s.label != -1]
    ok = [first_error(sc, threshold) == -1 for s, sc in zip(samples, scores) if s.label == -1]
    acc_err = sum(err) / len(err) if err else None
    acc_ok = sum(ok) / len(ok) if ok else None
    f1 = None
    if acc_err is not None and acc_ok is not None:
        f1 = 0.0 if acc_err + acc_ok == 0 else 2 * acc_err * acc_ok / (acc_err + acc_ok)
    return {"threshold": threshold, "erroneous_accuracy": acc_err, "correct_accuracy": acc_ok, "f1": f1,
            "num_erroneous": len(err), "num_correct": len(ok)}


def best_threshold(samples: Sequence[StepSample], scores: Sequence[Sequence[float]],
                   grid: Sequence[float] = THRESHOLDS) -> float:
    return max(grid, key=lambda t: (step_metrics(samples, scores, t)["f1"] or 0.0, -abs(t - 0.5)))


def evaluate_steps(samples: Sequence[StepSample], scores: Sequence[Sequence[float]],
                   split_samples: Optional[Sequence[StepSample]] = None,
                   split_scores: Optional[Sequence[Sequence[float]]] = None) -> dict:
    sweep = [step_metrics(samples, scores, t) for t in THRESHOLDS]
    if split_samples is not None:
        t = best_threshold(split_samples, split_scores)
        chosen_on = "threshold split"
    else:
        t = best_threshold(samples, scores)
        chosen_on = "test data (optimistic: no separate split given)"
    return {"chosen": step_metrics(samples, scores, t), "threshold_chosen_on": chosen_on, "sweep": sweep}
