"""The ER-PRM loss and step metrics (float32, at step-tag positions only).

Per step ``i`` with ER label ``y_i`` in [0, 1]:

- ``lm_tokens``: soft-target 2-way cross-entropy over the (+, -) logits,
  ``-(y_i log p+ + (1 - y_i) log p-)`` with ``p = softmax(l+, l-)``;
- ``scalar``: binary cross-entropy with logits, ``-(y_i log s(z) + (1 - y_i) log(1 - s(z)))``.

Reduction (documented contract): the training loss of a global batch is the **sum of
per-step losses over every labeled step in the global batch divided by the number of those
steps**. Megatron's per-token loss mode implements it: each microbatch returns its loss sum
and step count, gradients are divided by the step count summed over microbatches and
data-parallel ranks. The result does not depend on TP/PP/DP sizes or the microbatch split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_erprm.model.heads import HEAD_TYPES

# [loss_sum, num_steps, num_correct, abs_error_sum, num_positive_labels]
STATS_SIZE = 5


def _check_head(head: str) -> None:
    if head not in HEAD_TYPES:
        raise ValueError(f"head must be one of {HEAD_TYPES}, got {head!r}")


def step_losses(step_logits: torch.Tensor, targets: torch.Tensor, head: str) -> torch.Tensor:
    """Per-step loss, float32, shape ``[num_steps]``."""
    _check_head(head)
    y = targets.float()
    if head == "lm_tokens":
        logp = F.log_softmax(step_logits.float(), dim=-1)
        return -(y * logp[:, 0] + (1.0 - y) * logp[:, 1])
    return F.binary_cross_entropy_with_logits(step_logits.float(), y, reduction="none")


def step_scores(step_logits: torch.Tensor, head: str) -> torch.Tensor:
    """P(step is good) per step, float32."""
    _check_head(head)
    if head == "lm_tokens":
        return torch.softmax(step_logits.float(), dim=-1)[:, 0]
    return torch.sigmoid(step_logits.float())


def step_stats(step_logits: torch.Tensor, targets: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-step losses, detached stats vector to sum over microbatches and ranks)."""
    losses = step_losses(step_logits, targets, head)
    with torch.no_grad():
        scores = step_scores(step_logits, head)
        y = targets.float()
        stats = torch.stack(
            [
                losses.detach().sum(),
                torch.tensor(float(losses.numel()), device=losses.device),
                ((scores > 0.5) == (y > 0.5)).float().sum(),
                (scores - y).abs().sum(),
                (y > 0.5).float().sum(),
            ]
        )
    return losses, stats


def metrics_from_stats(stats: torch.Tensor) -> dict[str, float]:
    """Loss, step accuracy (score > 0.5 vs label > 0.5), MAE and positive-label fraction."""
    n = max(float(stats[1]), 1.0)
    return {
        "loss": float(stats[0]) / n,
        "step_accuracy": float(stats[2]) / n,
        "step_mae": float(stats[3]) / n,
        "positive_label_fraction": float(stats[4]) / n,
        "num_steps": float(stats[1]),
    }
