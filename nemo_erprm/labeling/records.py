"""The canonical labeled record (format version 1) and its validation.

One JSON object per line, one line per (problem, trajectory)::

    {
      "version": 1,
      "id": "train-000003/0",          # problem_id + "/" + trajectory index, unique
      "problem_id": "train-000003",
      "question": "...",
      "gold": "72",                     # bare gold answer
      "steps": ["step 1 text\\n", ...],  # exact text: "".join(steps) is the solution
      "step_rewards": [[1, 0, 1, 1], ..., [1]],   # per step: outcome of each completion
      "n_correct": [3, ..., 1],         # per step: sum of step_rewards
      "n_total": [4, ..., 1],           # per step: number of completions
      "n_truncated": [0, ..., 0],       # optional, per step: completions cut by max_new_tokens
      "outcome": true,                  # the whole solution is correct
      "labels": {"2": [0.72, ...], "0": [...], "inf": [...]},   # ER label per eta
      "step_tag": "ки",
      "meta": {"source": "reference|policy|given", "final_step_label": "outcome|rollout",
               "policy": {...}, "sampling": {...}, "segmentation": {...}, "seed": 1234}
    }

Labels for any other eta are re-derived from ``step_rewards`` (``label_rollouts.py relabel``).
"""

from __future__ import annotations

import math
from typing import Any

from nemo_erprm.jsonl import RecordError

RECORD_VERSION = 1

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "id": str,
    "problem_id": str,
    "question": str,
    "gold": str,
    "steps": list,
    "step_rewards": list,
    "n_correct": list,
    "n_total": list,
    "outcome": bool,
    "labels": dict,
    "step_tag": str,
    "meta": dict,
}


def validate_record(record: dict[str, Any], path: str = "<record>", line: int = 0) -> None:
    """Raise :class:`RecordError` naming ``path:line`` and the field if ``record`` is invalid."""

    def fail(msg: str) -> None:
        raise RecordError(path, line, msg)

    for field, kind in _REQUIRED.items():
        if field not in record:
            fail(f"missing field {field!r}")
        if not isinstance(record[field], kind):
            fail(f"field {field!r} must be {getattr(kind, '__name__', kind)}, got {type(record[field]).__name__}")
    if record["version"] != RECORD_VERSION:
        fail(f"unsupported record version {record['version']} (this code reads {RECORD_VERSION})")
    steps = record["steps"]
    n = len(steps)
    if n == 0:
        fail("field 'steps' is empty")
    for i, s in enumerate(steps):
        if not isinstance(s, str) or not s.strip():
            fail(f"steps[{i}] must be a non-empty string")
        if record["step_tag"] in s:
            fail(f"steps[{i}] contains the step tag {record['step_tag']!r}")
    for field in ("step_rewards", "n_correct", "n_total"):
        if len(record[field]) != n:
            fail(f"field {field!r} has {len(record[field])} entries for {n} steps")
    for i, (rewards, nc, nt) in enumerate(zip(record["step_rewards"], record["n_correct"], record["n_total"])):
        if not isinstance(rewards, list) or not rewards:
            fail(f"step_rewards[{i}] must be a non-empty list")
        if any(not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 <= r <= 1 for r in rewards):
            fail(f"step_rewards[{i}] must hold numbers in [0, 1]")
        if nt != len(rewards):
            fail(f"n_total[{i}]={nt} but step_rewards[{i}] has {len(rewards)} entries")
        if not math.isclose(nc, sum(rewards)):
            fail(f"n_correct[{i}]={nc} but step_rewards[{i}] sums to {sum(rewards)}")
    truncated = record.get("n_truncated")
    if truncated is not None:
        if not isinstance(truncated, list) or len(truncated) != n:
            fail(f"field 'n_truncated' must list one count per step ({n})")
        for i, (k, nt) in enumerate(zip(truncated, record["n_total"])):
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= nt:
                fail(f"n_truncated[{i}]={k!r} must be an integer in [0, n_total[{i}]={nt}]")
    for key, values in record["labels"].items():
        try:
            float(key)
        except ValueError:
            fail(f"labels key {key!r} is not an eta")
        if not isinstance(values, list) or len(values) != n:
            fail(f"labels[{key!r}] must list one label per step ({n})")
        if any(not isinstance(v, (int, float)) or not -1e-9 <= v <= 1 + 1e-9 for v in values):
            fail(f"labels[{key!r}] must hold numbers in [0, 1]")
