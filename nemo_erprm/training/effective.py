"""What a run really uses next to what its config asked for (``effective_settings.json`` and
one console note per reason): no setting changes behind the user's back."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemo_erprm.training.config import TrainConfig


def effective_pad_to(cfg: TrainConfig) -> str:
    """``data.pad_to`` as this run uses it (:func:`nemo_erprm.data.collate.effective_pad_to`)."""
    from nemo_erprm.data.layout import effective_pad_to as for_stages

    return for_stages(cfg.data.pad_to, cfg.model.pipeline_model_parallel_size)


def _fusion_off_reason(cfg: TrainConfig, name: str) -> str:
    from nemo_erprm.model.build import have_transformer_engine
    from nemo_erprm.training.model_setup import rope_fusion_blocked_by_packing

    reasons = []
    if not have_transformer_engine():
        reasons.append("the fused kernel needs Transformer Engine")
    if name == "apply_rope_fusion" and rope_fusion_blocked_by_packing(cfg):
        reasons.append("data.packing=true with model.transformer_impl=local gives rows of several samples, whose "
                       "per-row RoPE positions fused RoPE cannot take (model.transformer_impl=transformer_engine "
                       "packs through THD attention instead)")
    return "off (family default on): " + ("; ".join(reasons) or "turned off by the model config")


def effective_settings(cfg: TrainConfig, prm_config: Any, ddp: Any, on_gpu: bool, nodes: int,
                       devices: int) -> dict[str, Any]:
    """What this run really uses, next to what the config asked for: ``changed`` lists every
    setting that differs from the request or from the model family's default, with the reason."""
    from dataclasses import fields

    from nemo_erprm.runtime.cpu_backend import TE_ONLY_FUSIONS

    m, o = cfg.model, cfg.optim
    effective = {
        "backend": "gpu (nccl)" if on_gpu else "cpu backend (gloo)",
        "nodes": nodes, "devices_per_node": devices,
        "tensor_model_parallel_size": prm_config.tensor_model_parallel_size,
        "pipeline_model_parallel_size": prm_config.pipeline_model_parallel_size,
        "virtual_pipeline_model_parallel_size": prm_config.virtual_pipeline_model_parallel_size,
        "sequence_parallel": prm_config.sequence_parallel,
        "transformer_impl": prm_config.transformer_impl,
        "precision": m.precision, "fp8": prm_config.fp8,
        "recompute_granularity": prm_config.recompute_granularity,
        "distributed_optimizer": ddp.use_distributed_optimizer,
        "overlap_grad_reduce": ddp.overlap_grad_reduce,
        "overlap_param_gather": ddp.overlap_param_gather,
        "fully_reshardable_checkpoints": ddp.use_distributed_optimizer and o.reshardable_checkpoints,
        "pad_to": effective_pad_to(cfg),
    }
    requested = {
        "tensor_model_parallel_size": m.tensor_model_parallel_size,
        "pipeline_model_parallel_size": m.pipeline_model_parallel_size,
        "virtual_pipeline_model_parallel_size": m.virtual_pipeline_model_parallel_size,
        "sequence_parallel": m.sequence_parallel, "transformer_impl": m.transformer_impl, "fp8": m.fp8,
        "distributed_optimizer": o.distributed_optimizer, "overlap_grad_reduce": o.overlap_grad_reduce,
        "overlap_param_gather": o.overlap_param_gather,
    }
    changed = {key: f"requested {want!r}, running {effective[key]!r}" for key, want in requested.items()
               if want is not None and want != effective[key]}
    if effective["pad_to"] != cfg.data.pad_to:
        changed["pad_to"] = (f"requested {cfg.data.pad_to!r}, running {effective['pad_to']!r}: pipeline stages "
                             f"exchange activations of one fixed length")
    defaults = {f.name: f.default for f in fields(type(prm_config)) if f.name in TE_ONLY_FUSIONS}
    for name, default in defaults.items():
        if default is True and not getattr(prm_config, name):
            changed[name] = _fusion_off_reason(cfg, name)
    return {"effective": effective, "changed": changed}


def write_effective_settings(cfg: TrainConfig, settings: dict[str, Any]) -> None:
    """``effective_settings.json`` in the run folder, and one console note per reason."""
    (cfg.run_dir / "effective_settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    by_reason: dict[str, list[str]] = {}
    for key, why in settings["changed"].items():
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        print(f"note: {', '.join(keys)}: {why}", flush=True)
