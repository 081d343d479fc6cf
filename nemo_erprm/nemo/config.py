"""PRM configs per model family: NeMo's own GPT configs plus the ER-PRM fields.

``ERPRMConfigMixin`` adds the head, step tag and label tokens, the layer-spec switch
(``transformer_impl: local | transformer_engine``) and FP8 guard, our data/forward steps,
and per-step loss normalisation; ``configure_model`` builds :class:`ERPRMGPTModel` for this
rank's pipeline stage. DeepSeek-math-7B uses the Llama config (same architecture).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from nemo.collections.llm.gpt.model.base import GPTConfig, local_layer_spec, transformer_engine_layer_spec
from nemo.collections.llm.gpt.model.llama import Llama3Config, Llama31Config, LlamaConfig, apply_rope_scaling
from nemo.collections.llm.gpt.model.mistral import MistralConfig7B
from nemo.collections.llm.gpt.model.qwen2 import Qwen2Config
from nemo.lightning import get_vocab_size

from nemo_erprm.errors import ConfigError
from nemo_erprm.model.build import check_precision_switch, have_transformer_engine
from nemo_erprm.model.heads import HEAD_TYPES
from nemo_erprm.model.prm_gpt import ERPRMGPTModel
from nemo_erprm.nemo.steps import erprm_data_step, erprm_forward_step
from nemo_erprm.runtime.cpu_backend import TE_ONLY_FUSIONS



@dataclass
class ERPRMConfigMixin:
    head: str = "lm_tokens"
    step_tag: str = "ки"
    step_tag_id: Optional[int] = None
    plus_token_id: Optional[int] = None
    minus_token_id: Optional[int] = None
    transformer_impl: str = "local"
    packed_attention: bool = False  # THD attention for packed rows (TE spec only)
    calculate_per_token_loss: bool = True  # gradients / number of labeled steps in the global batch
    forward_step_fn: Callable = erprm_forward_step
    data_step_fn: Callable = erprm_data_step

    def __post_init__(self) -> None:
        if not have_transformer_engine():
            # NeMo's family configs default these to True; without TE megatron refuses them.
            for name in TE_ONLY_FUSIONS:
                if hasattr(self, name):
                    setattr(self, name, False)
        from nemo_erprm.runtime.cpu_backend import cpu_backend_enabled

        if cpu_backend_enabled():
            self.batch_p2p_comm = False  # gloo + interleaved PP needs unbatched p2p (see cpu_backend)
        super().__post_init__()

    def validate_prm(self) -> None:
        if self.head not in HEAD_TYPES:
            raise ConfigError(f"model.head must be one of {HEAD_TYPES}, got {self.head!r}")
        if self.head == "lm_tokens" and (self.plus_token_id is None or self.minus_token_id is None):
            raise ConfigError("model.head=lm_tokens needs plus_token_id and minus_token_id (the '+'/'-' tokens)")
        check_precision_switch(self.transformer_impl, self.fp8)
        if not self.calculate_per_token_loss:
            raise ConfigError("calculate_per_token_loss must stay True: the ER loss is a mean over labeled steps")

    def configure_model(self, tokenizer, pre_process=None, post_process=None, vp_stage=None) -> ERPRMGPTModel:
        self.validate_prm()
        vp_stage = vp_stage or 0
        if self.transformer_impl == "transformer_engine":
            spec = transformer_engine_layer_spec(self)
        else:
            from megatron.core.transformer.enums import AttnBackend

            self.attention_backend = AttnBackend.local
            spec = local_layer_spec(self)
        vocab_size = self.vocab_size or get_vocab_size(self, tokenizer.vocab_size, self.make_vocab_size_divisible_by)
        device = torch.device("meta") if self.init_model_with_meta_device else contextlib.nullcontext()
        with device:
            return self._build(spec, vocab_size, pre_process, post_process, vp_stage)

    def _build(self, spec, vocab_size, pre_process, post_process, vp_stage) -> ERPRMGPTModel:
        from megatron.core import parallel_state

        return ERPRMGPTModel(
            self,
            spec,
            vocab_size,
            self.seq_length,
            head=self.head,
            plus_token_id=self.plus_token_id,
            minus_token_id=self.minus_token_id,
            pre_process=pre_process or parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=post_process or parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            share_embeddings_and_output_weights=self.share_embeddings_and_output_weights,
            position_embedding_type=self.position_embedding_type,
            rotary_percent=self.rotary_percent,
            rotary_base=self.rotary_base,
            seq_len_interpolation_factor=self.seq_len_interpolation_factor,
            parallel_output=self.parallel_output,
            vp_stage=vp_stage,
        )


@dataclass
class ERPRMGPTConfig(ERPRMConfigMixin, GPTConfig):
    """Generic GPT backbone (set every shape field yourself)."""


@dataclass
class ERPRMLlamaConfig(ERPRMConfigMixin, LlamaConfig):
    """Llama / Llama-2 / DeepSeek-math-7B / SmolLM2 shapes (RMSNorm, SwiGLU, RoPE)."""


@dataclass
class ERPRMLlama3Config(ERPRMConfigMixin, Llama3Config):
    """Llama-3.x (RoPE scaling as in NeMo's Llama3Config)."""


@dataclass
class ERPRMLlama31Config(ERPRMConfigMixin, Llama31Config):
    """Llama-3.1+ (llama3-type RoPE scaling), what NeMo's importer picks for Llama-3.x HF configs."""

    def configure_model(self, tokenizer, pre_process=None, post_process=None, vp_stage=None) -> ERPRMGPTModel:
        # The mixin's configure_model comes first in the MRO and builds the model itself, so
        # Llama31Config.configure_model (which rescales RoPE after building) never runs: apply
        # the same scaling here, with NeMo's function and this config's factors.
        model = super().configure_model(tokenizer, pre_process, post_process, vp_stage)
        model.rotary_pos_emb.inv_freq = apply_rope_scaling(
            model.rotary_pos_emb.inv_freq,
            factor=self.scale_factor,
            low_freq_factor=self.low_freq_factor,
            high_freq_factor=self.high_freq_factor,
            old_context_len=self.old_context_len,
        )
        return model


@dataclass
class ERPRMMistralConfig(ERPRMConfigMixin, MistralConfig7B):
    """Mistral-7B (sliding window as in NeMo's MistralConfig7B)."""


@dataclass
class ERPRMQwen2Config(ERPRMConfigMixin, Qwen2Config):
    """Qwen2 / Qwen2.5(-Math) (qkv bias)."""


FAMILIES = {
    "gpt": ERPRMGPTConfig,
    "llama": ERPRMLlamaConfig,
    "deepseek": ERPRMLlamaConfig,
    "llama3": ERPRMLlama3Config,
    "llama31": ERPRMLlama31Config,
    "mistral": ERPRMMistralConfig,
    "qwen2": ERPRMQwen2Config,
}
