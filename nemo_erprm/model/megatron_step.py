"""One ER-PRM training step on megatron-core directly (no NeMo): forward/backward over the
microbatches with megatron's pipeline schedule, then the optimizer step.

NeMo's trainer does the same through `ERPRMModel` for real training; this path serves the
parity tests, the benchmarks and a future Megatron-Bridge driver. The loss contract is
:mod:`nemo_erprm.model.loss`: per microbatch ``(loss_sum, num_steps, stats)`` with
``calculate_per_token_loss`` so gradients are divided by the global number of steps.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Sequence

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_erprm.model.loss import STATS_SIZE, metrics_from_stats, step_scores, step_stats


def wrap_ddp(model: torch.nn.Module, use_distributed_optimizer: bool = False) -> DistributedDataParallel:
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
        average_in_collective=False,
    )
    return DistributedDataParallel(model.config, ddp_config, model)


def build_optimizer(models: Sequence[DistributedDataParallel], lr: float, weight_decay: float = 0.0,
                    use_distributed_optimizer: bool = False, clip_grad: float = 1.0):
    cfg = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        weight_decay=weight_decay,
        bf16=False,
        fp16=False,
        params_dtype=torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
        clip_grad=clip_grad,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_eps=1e-8,
    )
    return get_megatron_optimizer(cfg, list(models))


def _batch_to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _forward_step(head: str, device: torch.device, data_iterator: Iterator, model: torch.nn.Module):
    batch = _batch_to_device(next(data_iterator), device)
    out = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], step_mask=batch["step_mask"])

    def loss_func(output: torch.Tensor):
        targets = batch["step_targets"][batch["step_mask"]]
        losses, stats = step_stats(output, targets, head)
        loss_sum = losses.sum()
        extras = {"stats": stats, "step_losses": losses.detach(), "step_scores": step_scores(output.detach(), head)}
        return loss_sum, stats[1].clone().to(torch.int), extras

    return out, loss_func


def run_microbatches(
    models: Sequence[torch.nn.Module],
    microbatches: Sequence[dict[str, torch.Tensor]],
    head: str,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool,
) -> list[dict[str, Any]]:
    """Forward (and backward unless ``forward_only``) over ``microbatches`` with megatron's
    schedule. Returns the per-microbatch loss outputs on the last stage ([] elsewhere)."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    forward_backward = get_forward_backward_func()
    data: Any = iter(microbatches)
    if len(models) > 1:  # virtual pipeline: one iterator per chunk over the same data
        data = [iter(microbatches) for _ in models]
    return forward_backward(
        forward_step_func=partial(_forward_step, head, device),
        data_iterator=data,
        model=list(models) if len(models) > 1 else models[0],
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def reduce_stats(outputs: Sequence[dict[str, Any]]) -> torch.Tensor:
    """Sum the stats of this rank's microbatches and all-reduce over data-parallel ranks;
    broadcast to the whole pipeline so every rank reports the same numbers."""
    stats = torch.zeros(STATS_SIZE, dtype=torch.float64)
    for out in outputs:
        stats += out["stats"].double().cpu()
    if torch.distributed.is_initialized():
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        stats = stats.to(device)
        torch.distributed.all_reduce(stats, group=parallel_state.get_data_parallel_group())
        pp_group = parallel_state.get_pipeline_model_parallel_group()
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast(stats, src=last, group=pp_group)
        stats = stats.cpu()
    return stats


def train_step(
    models: Sequence[DistributedDataParallel],
    optimizer: Any,
    microbatches: Sequence[dict[str, torch.Tensor]],
    head: str,
    seq_length: int,
    micro_batch_size: int,
) -> dict[str, float]:
    """One optimizer step over this rank's microbatches; returns the global step metrics."""
    for m in models:
        m.zero_grad_buffer()
        m.config.finalize_model_grads_func = finalize_model_grads
    optimizer.zero_grad()
    outputs = run_microbatches(models, microbatches, head, seq_length, micro_batch_size, forward_only=False)
    update_ok, grad_norm, _ = optimizer.step()
    metrics = metrics_from_stats(reduce_stats(outputs))
    metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
    metrics["update_ok"] = bool(update_ok)
    return metrics


def forward_outputs(
    models: Sequence[torch.nn.Module],
    microbatches: Sequence[dict[str, torch.Tensor]],
    seq_length: int,
    micro_batch_size: int,
    lm_logits: bool = False,
) -> list[torch.Tensor]:
    """Forward-only pass over ``microbatches`` through the pipeline; on the last stage the
    model outputs per microbatch (step logits, or full LM logits with ``lm_logits``), else []."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def step(data_iterator, model):
        batch = _batch_to_device(next(data_iterator), device)
        out = model(batch["tokens"], batch["position_ids"], batch["attention_mask"],
                    step_mask=batch["step_mask"], return_lm_logits=lm_logits)
        return out, lambda output: (torch.zeros((), device=device), {"output": output.detach()})

    data: Any = iter(microbatches) if len(models) == 1 else [iter(microbatches) for _ in models]
    with torch.no_grad():
        results = get_forward_backward_func()(
            forward_step_func=step, data_iterator=data,
            model=list(models) if len(models) > 1 else models[0],
            num_microbatches=len(microbatches), seq_length=seq_length,
            micro_batch_size=micro_batch_size, forward_only=True,
        )
    return [r["output"] for r in results]
