"""Data and forward steps carrying the step-tag tensors (NeMo's stock `gpt_data_step`
would turn our unknown batch keys into None)."""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import parallel_state

FIRST_STAGE_KEYS = ("tokens",)
ALL_STAGE_KEYS = ("attention_mask", "position_ids")  # RoPE reads positions on every stage
LAST_STAGE_KEYS = ("step_mask", "step_targets", "step_sample", "num_tokens")
PACKED_KEYS = ("cu_seqlens", "cu_seqlens_argmin", "max_seqlen")


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
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in keys:
            out[key] = value.to(device, non_blocking=True)
        elif key in PACKED_KEYS:
            out[key] = value.cpu()
        else:
            out[key] = None
    return out


def erprm_forward_step(model, batch: dict[str, Any]) -> torch.Tensor:
    """Calls `ERPRMModel.forward`; THD packed attention only with the TE spec (GPU)."""
    packed_seq_params = None
    if getattr(model.config, "transformer_impl", "local") == "transformer_engine" and getattr(
        model.config, "packed_attention", False
    ):
        from nemo.collections.llm.gpt.model.base import get_packed_seq_params

        packed_seq_params = get_packed_seq_params(batch)
    return model(
        input_ids=batch["tokens"],
        position_ids=batch["position_ids"],
        attention_mask=batch["attention_mask"],
        step_mask=batch["step_mask"],
        packed_seq_params=packed_seq_params,
    )
