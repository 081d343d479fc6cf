"""ER-PRM labeling: segmentation, grading, ER labels, rollouts and the labeling job.

Importing this package stays light (no torch, no NeMo): generation backends load lazily.
"""

from nemo_erprm.labeling.answers import extract_answer, last_boxed
from nemo_erprm.labeling.er_label import er_label, er_label_from_counts, eta_key, labels_for_etas
from nemo_erprm.labeling.grading import grade, grade_answer, normalize_answer
from nemo_erprm.labeling.segmentation import (
    DEFAULT_STEP_TAG,
    SegmentationConfig,
    StepTagError,
    join_with_tags,
    render_prm_input,
    split_steps,
)

__all__ = [
    "DEFAULT_STEP_TAG",
    "SegmentationConfig",
    "StepTagError",
    "er_label",
    "er_label_from_counts",
    "eta_key",
    "extract_answer",
    "grade",
    "grade_answer",
    "join_with_tags",
    "labels_for_etas",
    "last_boxed",
    "normalize_answer",
    "render_prm_input",
    "split_steps",
]
