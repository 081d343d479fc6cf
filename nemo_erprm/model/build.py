"""Build an `ERPRMGPTModel` from a megatron `TransformerConfig`, with the layer spec switch.

``transformer_impl``: ``local`` (pure megatron-core modules: CPU, any GPU) or
``transformer_engine`` (TE fused layers on GPUs; required for FP8). FP8 with the local spec
is refused here: megatron would accept ``fp8=`` and silently train in high precision.
"""

from __future__ import annotations

from typing import Optional

from megatron.core import parallel_state
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_erprm.errors import ConfigError
from nemo_erprm.model.prm_gpt import ERPRMGPTModel
from nemo_erprm.model.settings import FP8_FORMATS, RECOMPUTE, TRANSFORMER_IMPLS  # noqa: F401 (re-exported)



def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # ImportError, or TE's RuntimeError without cuDNN
        return False
    return True


def check_precision_switch(transformer_impl: str, fp8: Optional[str]) -> None:
    """The one switch: FP8 only with the Transformer Engine spec, TE only where installed."""
    if transformer_impl not in TRANSFORMER_IMPLS:
        raise ConfigError(f"transformer_impl must be one of {TRANSFORMER_IMPLS}, got {transformer_impl!r}")
    if fp8 not in FP8_FORMATS:
        raise ConfigError(f"fp8 must be one of {FP8_FORMATS}, got {fp8!r}")
    if fp8 is not None and transformer_impl != "transformer_engine":
        raise ConfigError(
            f"fp8={fp8!r} needs transformer_impl=transformer_engine: the local spec would ignore it "
            "and train in high precision"
        )
    if transformer_impl == "transformer_engine" and not have_transformer_engine():
        raise ConfigError(
            "transformer_impl=transformer_engine needs Transformer Engine (GPU container, see Dockerfile); "
            "use transformer_impl=local on CPU"
        )


def layer_spec(config: TransformerConfig, transformer_impl: str) -> ModuleSpec:
    from megatron.core.models.gpt import gpt_layer_specs

    if transformer_impl == "transformer_engine":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    return gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization=config.normalization)


def build_prm_model(
    config: TransformerConfig,
    vocab_size: int,
    max_sequence_length: int,
    *,
    head: str,
    plus_token_id: Optional[int] = None,
    minus_token_id: Optional[int] = None,
    transformer_impl: str = "local",
    share_embeddings_and_output_weights: bool = False,
    rotary_base: int = 10000,
    vp_stage: Optional[int] = None,
) -> ERPRMGPTModel:
    """The PRM for this rank's pipeline stage (and virtual stage)."""
    check_precision_switch(transformer_impl, config.fp8)
    return ERPRMGPTModel(
        config,
        layer_spec(config, transformer_impl),
        vocab_size,
        max_sequence_length,
        head=head,
        plus_token_id=plus_token_id,
        minus_token_id=minus_token_id,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=rotary_base,
        parallel_output=True,
        vp_stage=vp_stage,
    )
