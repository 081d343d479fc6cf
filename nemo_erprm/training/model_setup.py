"""The model side of a run: tokenizer and PRM config (from ``model.init_from`` or random
weights of the configured shape), and the optimizer with its schedule and DDP settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nemo_erprm.errors import ConfigError

if TYPE_CHECKING:
    from nemo_erprm.training.config import TrainConfig


def load_tokenizer_and_prm_config(cfg: TrainConfig) -> tuple[Any, Any]:
    """``(tokenizer, PRM config)``: the initial checkpoint's tokenizer when ``model.init_from``
    is set, else ``model.tokenizer`` saved in the run folder; the config from
    :func:`build_prm_config`."""
    if cfg.model.init_from is not None:
        from nemo_erprm.convert.load import load_prm_config

        _, tokenizer = load_prm_config(cfg.model.init_from)
    else:
        from nemo_erprm.training.run_folder import tokenizer_for_random_init

        tokenizer = tokenizer_for_random_init(cfg)
    return tokenizer, build_prm_config(cfg, tokenizer)


def build_prm_config(cfg: TrainConfig, tokenizer: Any) -> Any:
    """The NeMo PRM config: the checkpoint's (shape, head, tokens) with this run's layout,
    precision and recompute settings, or a fresh one from the `model` section.

    Every setting is written through :func:`set_config_fields`, so the checkpoints of this run
    record it in their io context (a plain setattr is not saved: a run's FP8/TE settings would
    be lost and the checkpoint reloaded with the init checkpoint's). Packed rows under the TE
    spec use THD attention (``model.packed_attention``); packed rows under the local spec need
    per-row RoPE positions, which fused RoPE cannot take: fusion is turned off (the run's
    effective settings say so, :func:`nemo_erprm.training.effective.effective_settings`)."""
    from nemo_erprm.nemo.model_config import build_erprm_config, precision_dtype, set_config_fields

    m = cfg.model
    thd = m.uses_thd(cfg.data.packing)
    if m.init_from is None:
        prm = build_erprm_config(m, tokenizer, packed_attention=thd)
    else:
        from nemo_erprm.convert.load import load_prm_config
        from nemo_erprm.model.build import RECOMPUTE

        prm, _ = load_prm_config(m.init_from)
        if m.step_tag != prm.step_tag or m.head != prm.head:
            raise ConfigError(f"model.init_from {m.init_from} has head={prm.head!r}, step tag {prm.step_tag!r}; "
                              f"the config says head={m.head!r}, step_tag={m.step_tag!r}")
        dtype = precision_dtype(m.precision)
        recompute_off = dict(recompute_granularity=None, recompute_method=None, recompute_num_layers=None)
        layout = dict(
            tensor_model_parallel_size=m.tensor_model_parallel_size,
            pipeline_model_parallel_size=m.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=m.virtual_pipeline_model_parallel_size,
            sequence_parallel=m.sequence_parallel, transformer_impl=m.transformer_impl, fp8=m.fp8,
            fp8_recipe=m.fp8_recipe, params_dtype=dtype, pipeline_dtype=dtype, bf16=m.precision == "bf16",
            fp16=m.precision == "fp16", hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
            packed_attention=thd, **{**recompute_off, **RECOMPUTE[m.recompute]},
        )
        if m.seq_length:
            layout["seq_length"] = m.seq_length
        set_config_fields(prm, **layout, init_model_with_meta_device=False, perform_initialization=True)
    if rope_fusion_blocked_by_packing(cfg) and getattr(prm, "apply_rope_fusion", False):
        set_config_fields(prm, apply_rope_fusion=False)
    return prm


def rope_fusion_blocked_by_packing(cfg: TrainConfig) -> bool:
    """Packed rows under the local spec: each row holds several samples whose RoPE positions
    restart, which Transformer Engine's fused RoPE cannot take."""
    return cfg.data.packing and not cfg.model.uses_thd(cfg.data.packing)


def uses_distributed_optimizer(cfg: TrainConfig, on_gpu: bool) -> bool:
    """``optim.distributed_optimizer``, defaulting to on for GPU runs."""
    o = cfg.optim
    return on_gpu if o.distributed_optimizer is None else o.distributed_optimizer


def build_optimizer(cfg: TrainConfig, max_steps: int, on_gpu: bool) -> Any:
    """NeMo's megatron optimizer module: Adam, linear warmup then cosine decay to ``optim.min_lr``."""
    import nemo.lightning as nl
    from megatron.core.optimizer import OptimizerConfig
    from nemo.lightning.pytorch.optim import CosineAnnealingScheduler

    from nemo_erprm.nemo.model_config import precision_dtype

    m, o = cfg.model, cfg.optim
    dtype = precision_dtype(m.precision)
    dist_opt = uses_distributed_optimizer(cfg, on_gpu)
    if dist_opt:
        from nemo_erprm.runtime.dist_optimizer import make_dist_optimizer_checkpointable

        make_dist_optimizer_checkpointable()  # see runtime/dist_optimizer.py
    return nl.MegatronOptimizerModule(
        config=OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, clip_grad=o.clip_grad, bf16=m.precision == "bf16",
            fp16=m.precision == "fp16", params_dtype=dtype, use_distributed_optimizer=dist_opt,
        ),
        lr_scheduler=CosineAnnealingScheduler(
            max_steps=max(max_steps, 1), warmup_steps=int(o.warmup_ratio * max_steps), constant_steps=0,
            min_lr=o.min_lr),
    )


def build_ddp_config(cfg: TrainConfig, on_gpu: bool) -> Any:
    """megatron's DDP settings: fp32 gradient reduction, both overlaps on by default on GPUs."""
    from megatron.core.distributed import DistributedDataParallelConfig

    o = cfg.optim
    dist_opt = uses_distributed_optimizer(cfg, on_gpu)
    return DistributedDataParallelConfig(
        use_distributed_optimizer=dist_opt, grad_reduce_in_fp32=True, check_for_nan_in_grad=True,
        overlap_grad_reduce=on_gpu if o.overlap_grad_reduce is None else o.overlap_grad_reduce,
        overlap_param_gather=dist_opt and (on_gpu if o.overlap_param_gather is None else o.overlap_param_gather),
        bucket_size=o.ddp_bucket_size)
