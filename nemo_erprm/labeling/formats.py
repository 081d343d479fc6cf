"""Exporters from canonical records to the formats PRM trainers read.

- ``text_value`` (ER-PRM / OpenRLHF / Math-Shepherd style):
  ``{"text": "<question> step 1 ки\\nstep 2 ки", "value": [label per step]}``
- ``trl`` (TRL ``PRMTrainer`` stepwise supervision):
  ``{"prompt": question, "completions": [step, ...], "labels": [bool, ...],
  "soft_labels": [float, ...]}`` — TRL trains on the boolean labels (ER label > threshold);
  ``soft_labels`` keeps the ER values for trainers that use them.

Both load with ``datasets.load_dataset("json", data_files=...)``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.er_label import eta_key, labels_for_etas
from nemo_erprm.labeling.segmentation import render_prm_input

EXPORT_FORMATS = ("text_value", "trl")


def record_labels(record: dict[str, Any], eta: float) -> list[float]:
    """Labels of ``record`` for ``eta``: stored ones, or re-derived from ``step_rewards``."""
    key = eta_key(eta)
    if key in record["labels"]:
        return list(record["labels"][key])
    return labels_for_etas(record["step_rewards"], [eta])[key]


def to_text_value(record: dict[str, Any], eta: float) -> dict[str, Any]:
    return {
        "text": render_prm_input(record["question"], record["steps"], record["step_tag"]),
        "value": record_labels(record, eta),
    }


def check_threshold(threshold: float, key: str = "threshold") -> float:
    """ER labels lie in [0, 1] and a trl label is ``ER label > threshold``: outside [0, 1) (or
    nan) every label would come out the same."""
    if not 0 <= threshold < 1:
        raise ConfigError(f"{key} must be in [0, 1) (trl label: ER label > threshold), got {threshold}")
    return threshold


def to_trl(record: dict[str, Any], eta: float, threshold: float = 0.5) -> dict[str, Any]:
    soft = record_labels(record, eta)
    return {
        "prompt": record["question"],
        "completions": [s.strip() for s in record["steps"]],
        "labels": [v > threshold for v in soft],
        "soft_labels": soft,
    }


def export_records(
    records: Iterable[dict[str, Any]], fmt: str, eta: float, threshold: float = 0.5
) -> Iterator[dict[str, Any]]:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    check_threshold(threshold)
    for record in records:
        yield to_text_value(record, eta) if fmt == "text_value" else to_trl(record, eta, threshold)
