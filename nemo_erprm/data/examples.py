"""Labeled training examples from JSONL, in any of the formats the labeling stage writes.

Every format becomes ``{"text": <PRM input with one step tag per step>, "values": [float],
"group": <problem id>}`` (``group`` keeps a problem's trajectories on one side of a split)
rendered by :func:`nemo_erprm.labeling.render_prm_input`, the same renderer evaluation and
serving use, so training and inference see identical text.

Formats (``format``):
- ``canonical``: the labeling stage's records (``labels[eta]``; missing etas are re-derived
  from ``step_rewards``).
- ``text_value``: ``{"text", "value"}`` (ER-PRM / OpenRLHF / Math-Shepherd).
- ``trl``: ``{"prompt", "completions", "labels"}`` (``soft_labels`` used when present).
- ``auto``: decided per file from the first record's fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemo_erprm.jsonl import RecordError, iter_jsonl
from nemo_erprm.labeling.formats import record_labels
from nemo_erprm.labeling.records import validate_record
from nemo_erprm.labeling.segmentation import render_prm_input

DATA_FORMATS = ("auto", "canonical", "text_value", "trl")


def detect_format(record: dict[str, Any]) -> str:
    if "steps" in record and "step_rewards" in record:
        return "canonical"
    if "text" in record and "value" in record:
        return "text_value"
    if "prompt" in record and "completions" in record:
        return "trl"
    raise ValueError(f"unknown record layout with fields {sorted(record)}; expected canonical, text_value or trl")


def to_example(record: dict[str, Any], fmt: str, eta: float, step_tag: str, path: str, line: int) -> dict[str, Any]:
    """One record -> ``{"text", "values"}``, validated; errors name ``path:line``."""
    try:
        if fmt == "auto":
            fmt = detect_format(record)
        if fmt == "canonical":
            validate_record(record, path, line)
            if record["step_tag"] != step_tag:
                raise RecordError(path, line, f"record uses step tag {record['step_tag']!r}, the model {step_tag!r}")
            return {"text": render_prm_input(record["question"], record["steps"], step_tag),
                    "values": [float(v) for v in record_labels(record, eta)], "group": record["problem_id"]}
        if fmt == "text_value":
            text, values = record["text"], record["value"]
            if not isinstance(text, str) or not isinstance(values, list):
                raise RecordError(path, line, "fields 'text' (string) and 'value' (list) required")
            if text.count(step_tag) != len(values):
                raise RecordError(path, line, f"'text' has {text.count(step_tag)} step tags {step_tag!r} "
                                              f"but 'value' has {len(values)} labels")
            return {"text": text, "values": [float(v) for v in values], "group": str(record.get("id", text))}
        if fmt == "trl":
            comps = record["completions"]
            labels = record.get("soft_labels", record.get("labels"))
            if not isinstance(comps, list) or not isinstance(labels, list) or len(comps) != len(labels):
                raise RecordError(path, line, "'completions' and 'labels' must be lists of equal length")
            return {"text": render_prm_input(record["prompt"], comps, step_tag),
                    "values": [float(v) for v in labels], "group": record["prompt"]}
        raise RecordError(path, line, f"unknown format {fmt!r}; one of {DATA_FORMATS}")
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise RecordError(path, line, f"bad {fmt} record: {e}") from None


def held_out(group: str, fraction: float) -> bool:
    """Whether a problem goes to the held-out split: a stable hash of its id, so every rank
    and every rerun splits the same way."""
    import hashlib

    digest = hashlib.sha256(group.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_examples(path: str | Path, fmt: str = "auto", eta: float = 2.0, step_tag: str = "ки") -> list[dict[str, Any]]:
    """All examples of a JSONL file, validated before anything is tokenized."""
    out, seen = [], set()
    for line, record in iter_jsonl(path):
        if "step_rewards" in record and isinstance(record.get("id"), str):
            if record["id"] in seen:  # a labeling record written twice (two runs of one shard): once
                continue
            seen.add(record["id"])
        example = to_example(record, fmt, eta, step_tag, str(path), line)
        if any(not 0.0 <= v <= 1.0 for v in example["values"]):
            raise RecordError(path, line, "labels must lie in [0, 1]")
        example["source_line"] = line
        out.append(example)
    if not out:
        raise RecordError(path, 0, "no examples in file")
    return out
