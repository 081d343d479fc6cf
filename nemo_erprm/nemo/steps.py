"""Data and forward steps carrying the step-tag tensors (NeMo's stock `gpt_data_step`
would turn our unknown batch keys into None).

The data step also derives, on the host, what the forward step needs to pick the attention
path without a device sync: the flattened THD boundaries (:mod:`nemo_erprm.model.thd`) and
whether any row packs several samples (only then does RoPE need per-row positions).
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import parallel_state

from nemo_erprm.model.thd import (
    flatten_cu_seqlens,
    flatten_rows,
    max_segment_length,
    rows_hold_several_samples,
    thd_packed_seq_params,
)

FIRST_STAGE_KEYS = ("tokens",)
ALL_STAGE_KEYS = ("attention_mask", "position_ids")  # RoPE reads positions on every stage
LAST_STAGE_KEYS = ("step_mask", "step_targets", "step_sample", "num_tokens")
# derived here: [m+1] int32 boundaries of the micro-batch's rows laid end to end (on the
# compute device), their longest segment (int), and whether a row holds several samples (bool)
THD_CU_SEQLENS, THD_MAX_SEQLEN, SEVERAL_PER_ROW = "thd_cu_seqlens", "thd_max_seqlen", "several_samples_per_row"


def erprm_data_step(dataloader_iter) -> dict[str, Any]:
    batch = next(dataloader_iter)
    if isinstance(batch, tuple) and len(batch) == 3:  # (batch, batch_idx, dataloader_idx)
        batch = batch[0]
    keys = set(ALL_STAGE_KEYS)
    if parallel_state.is_pipeline_first_stage():
        keys.update(FIRST_STAGE_KEYS)
    if parallel_state.is_pipeline_last_stage():
        keys.update(LAST_STAGE_KEYS)
    device = torch.cuda.current_device()
    out: dict[str, Any] = {key: (value.to(device, non_blocking=True) if key in keys else None)
                           for key, value in batch.items()}
    if batch.get("cu_seqlens") is not None:
        cu_cpu, seq_length = batch["cu_seqlens"].cpu(), batch["tokens"].shape[1]
        flat = flatten_cu_seqlens(cu_cpu, seq_length)
        out[THD_CU_SEQLENS] = flat.to(device, non_blocking=True)
        out[THD_MAX_SEQLEN] = max_segment_length(flat)
        out[SEVERAL_PER_ROW] = rows_hold_several_samples(cu_cpu, batch["num_tokens"].cpu())
    return out


def erprm_forward_step(model, batch: dict[str, Any]) -> torch.Tensor:
    """Calls `ERPRMModel.forward`, on one of three attention paths:

    - THD (``config.packed_attention``, TE spec): the micro-batch as one row with sample
      boundaries; no mask, RoPE restarts at each boundary;
    - rows packing several samples (local spec): the block-diagonal mask and per-row RoPE
      positions;
    - one sample per row: the causal mask and the shared RoPE table (positions 0..s-1; the
      only form Transformer Engine's fused RoPE accepts).
    """
    if getattr(model.config, "packed_attention", False):
        if batch.get(THD_CU_SEQLENS) is None:
            raise ValueError("packed_attention (THD) needs the batch's cu_seqlens (nemo_erprm.data.collate)")
        return model(
            input_ids=flatten_rows(batch["tokens"]),
            position_ids=None,
            attention_mask=None,
            step_mask=flatten_rows(batch["step_mask"]),
            packed_seq_params=thd_packed_seq_params(batch[THD_CU_SEQLENS], batch[THD_MAX_SEQLEN]),
        )
    return model(
        input_ids=batch["tokens"],
        position_ids=batch["position_ids"] if batch.get(SEVERAL_PER_ROW, True) else None,
        attention_mask=batch["attention_mask"],
        step_mask=batch["step_mask"],
        packed_seq_params=None,
    )
