"""`ERPRMGPTModel`: megatron-core's GPTModel with a step-reward head instead of LM logits.

The backbone (embedding, decoder, final norm, output layer) is megatron's own, so TP, PP,
virtual PP, the TE layer spec and FP8 behave exactly as in megatron. What changes is the
last pipeline stage: the final hidden states are gathered at step-tag positions and only
those go through the head (see :mod:`nemo_erprm.model.heads`). Other stages return hidden
states for the pipeline as usual.

RoPE honours ``position_ids``, so several samples packed in one row (positions restarting
at 0, block-diagonal attention mask) compute exactly what they compute unpacked. Rows of one
sample pass ``position_ids=None`` and use megatron's shared RoPE table; under the TE spec,
packed rows use THD attention instead (``packed_seq_params``, :mod:`nemo_erprm.model.thd`).
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_erprm.model.heads import HEAD_TYPES, LMTokensHead, ScalarHead, gather_step_hidden


class ERPRMGPTModel(GPTModel):
    def __init__(
        self,
        config: TransformerConfig,
        transformer_layer_spec: ModuleSpec,
        vocab_size: int,
        max_sequence_length: int,
        *,
        head: str = "lm_tokens",
        plus_token_id: Optional[int] = None,
        minus_token_id: Optional[int] = None,
        **kwargs,
    ):
        if head not in HEAD_TYPES:
            raise ValueError(f"head must be one of {HEAD_TYPES}, got {head!r}")
        super().__init__(config, transformer_layer_spec, vocab_size, max_sequence_length, **kwargs)
        self.head_type = head
        if self.post_process:
            if head == "lm_tokens":
                if plus_token_id is None or minus_token_id is None:
                    raise ValueError("the lm_tokens head needs plus_token_id and minus_token_id")
                self.step_head = LMTokensHead(plus_token_id, minus_token_id, vocab_size)
            else:
                self.step_head = ScalarHead(config)
                if not self.share_embeddings_and_output_weights:
                    # Unused by the scalar head: keep it (checkpoint layout, HF export) but frozen,
                    # so weight decay does not drift it.
                    self.output_layer.weight.requires_grad_(False)

    def _wait_for_output_weight(self) -> None:
        """The lm_tokens head reads the output layer's weight without calling the layer, so run
        the layer's forward pre-hooks first: there megatron's DDP waits for the weight's
        all-gather when the distributed optimizer overlaps the parameter gather with the
        forward pass (``overlap_param_gather``). Skipping them reads stale rows and leaves the
        bucket's gather pending, which fails the next step. (A tied weight on the first stage
        has no parameter here: the embedding's own hook already waited for it.)"""
        for hook in list(self.output_layer._forward_pre_hooks.values()):
            hook(self.output_layer, ())

    def _positional_rotary(self, rotary_pos_emb, position_ids: Optional[torch.Tensor]):
        """RoPE frequencies for this batch: without ``position_ids`` megatron's shared table
        ``[s, 1, 1, d]`` (every row counts 0..s-1); with them, the table indexed per row
        ``[s, b, 1, d]`` (rows packing several samples, positions restarting at each).

        Transformer Engine's fused RoPE accepts only the shared table (``freqs.size(1) == 1``,
        ``apply_rope.cpp``), so per-row positions with ``apply_rope_fusion`` are refused here
        rather than failing inside the kernel; packed rows under the TE spec go through THD
        (:mod:`nemo_erprm.model.thd`), where RoPE restarts at the sample boundaries."""
        if rotary_pos_emb is None or position_ids is None or isinstance(rotary_pos_emb, tuple):
            return rotary_pos_emb
        if self.config.apply_rope_fusion:
            raise ValueError(
                "per-row RoPE positions (rows packing several samples, attention by mask) cannot use fused RoPE: "
                "set apply_rope_fusion=False, use THD attention (packed_attention with the TE spec), or pass "
                "position_ids=None for rows of one sample each"
            )
        table = rotary_pos_emb[:, 0, 0, :]  # [max_s, d]
        return table[position_ids.transpose(0, 1)].unsqueeze(2)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        step_mask: Optional[torch.Tensor] = None,
        decoder_input: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
        return_lm_logits: bool = False,
        **unused,
    ) -> torch.Tensor:
        """Last stage: step logits ``[num_steps, 2]`` (lm_tokens) or ``[num_steps]`` (scalar),
        for the positions where ``step_mask`` ([b, s] bool) is set. Other stages: hidden states.

        ``return_lm_logits=True`` (verification only, e.g. conversion parity) returns the full
        ``[b, s, vocab]`` language-model logits of the backbone instead, gathered over TP."""
        decoder_input, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin, sequence_len_offset = self._preprocess(
            input_ids=input_ids,
            position_ids=position_ids,
            decoder_input=decoder_input,
            packed_seq_params=packed_seq_params,
        )[:5]
        if packed_seq_params is None:
            rotary_pos_emb = self._positional_rotary(rotary_pos_emb, position_ids)
        hidden_states = self.decoder(
            hidden_states=decoder_input,
            attention_mask=attention_mask,
            rotary_pos_emb=rotary_pos_emb,
            rotary_pos_cos=rotary_pos_cos,
            rotary_pos_sin=rotary_pos_sin,
            packed_seq_params=packed_seq_params,
            sequence_len_offset=sequence_len_offset,
        )
        if not self.post_process:
            return hidden_states
        if return_lm_logits:
            weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
            logits, _ = self.output_layer(hidden_states, weight=weight, runtime_gather_output=True)
            return logits.transpose(0, 1).contiguous()
        if step_mask is None:
            raise ValueError("the last pipeline stage needs step_mask to know where the step tags are")
        hidden = gather_step_hidden(hidden_states, step_mask, self.config.sequence_parallel)
        if self.head_type == "lm_tokens":
            self._wait_for_output_weight()
            weight = (
                self.shared_embedding_or_output_weight()
                if self.share_embeddings_and_output_weights
                else self.output_layer.weight
            )
            return self.step_head(hidden, weight)
        return self.step_head(hidden)
