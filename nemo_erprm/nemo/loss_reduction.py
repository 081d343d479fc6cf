"""`ERLossReduction`: NeMo's loss-reduction hook for the ER-PRM loss.

Per microbatch it returns ``(loss_sum, num_steps, {"stats": ...})``: with the model config's
``calculate_per_token_loss=True`` megatron divides the gradients by the number of labeled
steps of the whole global batch (summed over microbatches and data-parallel ranks), which
makes the loss the mean over all labeled steps of the global batch, independent of
TP/PP/DP and of the microbatch split (see :mod:`nemo_erprm.model.loss`).

``reduce`` (last pipeline stage, once per global batch) also leaves, in ``last_metrics``,
the real tokens of the global batch (``tokens``, for throughput) and in ``last_sample_ids``
the ids of the samples it held (all data-parallel ranks), for the resume checks.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from megatron.core import parallel_state
from nemo.lightning.megatron_parallel import MegatronLossReduction

from nemo_erprm.model.loss import STATS_SIZE, metrics_from_stats, step_stats


class ERLossReduction(MegatronLossReduction):
    def __init__(self, head: str, validation_step: bool = False):
        super().__init__()
        self.head = head
        self.validation_step = validation_step
        self.last_metrics: dict[str, float] = {}
        self.last_sample_ids: list[int] = []
        self._tokens = 0
        self._sample_ids: list[torch.Tensor] = []

    def start_step(self) -> None:
        self._tokens, self._sample_ids = 0, []

    def forward(self, batch: dict[str, Any], forward_out: torch.Tensor):
        targets = batch["step_targets"][batch["step_mask"]]
        losses, stats = step_stats(forward_out, targets, self.head)
        num_steps = stats[1].clone().to(torch.int)
        if batch.get("num_tokens") is not None:
            self._tokens += int(batch["num_tokens"].sum())
        if batch.get("step_sample") is not None:
            self._sample_ids.append(batch["step_sample"][batch["step_mask"]].unique().cpu())
        return losses.sum(), num_steps, {"stats": stats}

    def reduce(self, losses_reduced_per_micro_batch: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        device = torch.cuda.current_device()
        stats = torch.zeros(STATS_SIZE, dtype=torch.float64, device=device)
        for out in losses_reduced_per_micro_batch:
            stats += out["stats"].to(device=device, dtype=torch.float64)
        tokens = torch.tensor([float(self._tokens)], dtype=torch.float64, device=device)
        dp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        both = torch.cat([stats, tokens])
        torch.distributed.all_reduce(both, group=dp_group)
        stats, tokens = both[:STATS_SIZE], both[STATS_SIZE:]
        self.last_metrics = metrics_from_stats(stats.cpu())
        self.last_metrics["tokens"] = float(tokens.item())
        ids = torch.cat(self._sample_ids).tolist() if self._sample_ids else []
        gathered: list = [None] * torch.distributed.get_world_size(dp_group)
        torch.distributed.all_gather_object(gathered, ids, group=dp_group)
        self.last_sample_ids = sorted(i for part in gathered for i in part)
        self._tokens, self._sample_ids = 0, []
        return torch.tensor(self.last_metrics["loss"], dtype=torch.float32, device=device)
