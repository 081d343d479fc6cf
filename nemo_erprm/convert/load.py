"""Load a PRM checkpoint (NeMo 2 layout: ``context/`` + ``weights/``) into megatron-core modules
for this rank's TP/PP layout, without a trainer (scoring, export, parity checks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from nemo_erprm.errors import ConfigError

PREFIX = "module."


def read_prm_meta(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "prm_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_prm_config(ckpt: str | Path):
    """(NeMo PRM config, NeMo tokenizer) stored in the checkpoint's io context."""
    from nemo.lightning.io import load_context

    ckpt = Path(ckpt)
    if not (ckpt / "context").is_dir() or not (ckpt / "weights").is_dir():
        raise ConfigError(f"{ckpt}: not a PRM checkpoint (needs context/ and weights/; see tools/convert_hf_checkpoint.py)")
    model = load_context(str(ckpt / "context"), subpath="model")
    return model.config, model.tokenizer


def inference_settings(cfg: Any, transformer_impl: str = "local") -> Any:
    """Turn a checkpoint's training settings into scoring/export settings, weights untouched.

    A checkpoint's context records how it was trained: FP8, the Transformer Engine spec,
    sequence parallelism, recompute, THD attention. None of it changes the function the
    weights compute, and several would fail here: FP8 needs TE and a GPU, and TE's FP8 GEMMs
    need token counts divisible by 8 (``assert_dim_for_fp8_exec``), which arbitrary scoring
    batches are not; the TE spec needs TE installed. So scoring and export run in high
    precision on ``transformer_impl`` (the local spec by default: megatron's own modules,
    CPU or GPU; checkpoint keys are the same for both specs), with unfused RoPE (scorers pass
    per-row positions)."""
    from nemo_erprm.model.build import have_transformer_engine
    from nemo_erprm.runtime.cpu_backend import TE_ONLY_FUSIONS

    if transformer_impl == "transformer_engine" and not have_transformer_engine():
        transformer_impl = "local"
    cfg.transformer_impl = transformer_impl
    cfg.fp8 = None
    cfg.fp8_param = False
    cfg.sequence_parallel = False
    cfg.packed_attention = False
    cfg.recompute_granularity = cfg.recompute_method = cfg.recompute_num_layers = None
    fusions = TE_ONLY_FUSIONS if transformer_impl == "local" else ("apply_rope_fusion",)
    for name in fusions:
        if hasattr(cfg, name):
            setattr(cfg, name, False)
    return cfg


def load_prm_modules(ckpt: str | Path, tp: int = 1, pp: int = 1, vpp: Optional[int] = None,
                     dtype: Optional[torch.dtype] = None, transformer_impl: str = "local"):
    """``(modules, config, tokenizer)``: this rank's model chunk(s) with the checkpoint's weights,
    set up for scoring/export (:func:`inference_settings`: no FP8, ``transformer_impl`` spec).

    Initialises torch.distributed and megatron's parallel state for (tp, pp) when needed."""
    from megatron.core import dist_checkpointing, parallel_state

    from nemo_erprm.runtime.parallel import init_distributed

    cfg, tokenizer = load_prm_config(ckpt)
    inference_settings(cfg, transformer_impl)
    cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size = tp, pp
    cfg.virtual_pipeline_model_parallel_size = vpp
    if dtype is not None:
        cfg.params_dtype = cfg.pipeline_dtype = dtype
        cfg.bf16, cfg.fp16 = dtype == torch.bfloat16, dtype == torch.float16
    cfg.perform_initialization = False
    init_distributed(tp, pp, vpp)
    stages = [None] if not vpp else list(range(vpp))
    modules = []
    for vp in stages:
        if vp is not None:
            parallel_state.set_virtual_pipeline_model_parallel_rank(vp)
        modules.append(cfg.configure_model(tokenizer, vp_stage=vp))
    sharded = {i: m.sharded_state_dict(prefix=PREFIX) for i, m in enumerate(modules)}
    loaded = dist_checkpointing.load(sharded, str(Path(ckpt) / "weights"))
    for i, m in enumerate(modules):
        state = {k[len(PREFIX):]: v for k, v in loaded[i].items()}
        missing, unexpected = m.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing:
            raise ConfigError(f"{ckpt}: checkpoint lacks {missing[:8]}")
    for m in modules:
        m.eval()
    return modules, cfg, tokenizer
