"""Step-reward heads on megatron-core, applied to hidden states gathered at step-tag positions.

Both heads produce, per step, logits whose softmax/sigmoid is P(step is good):

- ``lm_tokens`` (the paper's): the ``+`` and ``-`` rows of the (vocab-parallel) output layer,
  a 2-way softmax over their logits. The base model starts from its own LM head. Under
  tensor parallelism each row lives on the rank owning its vocab slice; every rank computes
  the rows it owns (zeros otherwise) and an all-reduce sums them, with megatron's
  copy/reduce autograd regions so gradients match TP=1 exactly.
- ``scalar``: a new ``hidden -> 1`` linear layer, replicated on every TP rank (identical
  inputs and gradients keep the copies identical), zero-mean normal init with the model's
  ``init_method_std`` and zero bias, so every step starts at P(good) = 0.5 +- small noise.

Only ``[num_steps, hidden]`` reaches a head: ``[batch, seq, vocab]`` logits never exist.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.utils import VocabUtility
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_erprm.model.settings import HEAD_TYPES  # noqa: F401 (re-exported)



def gather_step_hidden(hidden_states: torch.Tensor, step_mask: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """``[seq, batch, hidden]`` decoder output -> ``[num_steps, hidden]`` at ``step_mask``.

    Steps come out in row-major ``[batch, seq]`` order, the order of ``targets[step_mask]``.
    """
    if sequence_parallel:  # hidden states are split along the sequence: gather them first
        # The gradient arriving here is already complete and identical on every TP rank (the
        # lm_tokens head all-reduces it, the scalar head is replicated), so the backward must
        # only take this rank's slice: a reduce-scatter (tensor_parallel_output_grad=True)
        # would sum TP copies and multiply every backbone gradient by the TP size.
        hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False)
    return hidden_states.transpose(0, 1)[step_mask]


class LMTokensHead(torch.nn.Module):
    """The ``+``/``-`` rows of the output layer; no parameters of its own."""

    def __init__(self, plus_id: int, minus_id: int, vocab_size: int):
        super().__init__()
        if plus_id == minus_id:
            raise ValueError("the '+' and '-' label tokens must be different token ids")
        for name, tid in (("plus", plus_id), ("minus", minus_id)):
            if not 0 <= tid < vocab_size:
                raise ValueError(f"{name} token id {tid} outside the vocabulary [0, {vocab_size})")
        self.register_buffer("label_ids", torch.tensor([plus_id, minus_id], dtype=torch.long), persistent=False)

    def forward(self, hidden: torch.Tensor, output_weight: torch.Tensor) -> torch.Tensor:
        """``[n, h]`` hidden, local ``[vocab/tp, h]`` output weight -> ``[n, 2]`` (+, -) logits."""
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(output_weight.shape[0], tp_rank, tp_size)
        ids = self.label_ids.to(output_weight.device)
        owned = (ids >= start) & (ids < end)
        local_rows = output_weight[(ids - start).clamp(0, output_weight.shape[0] - 1)]
        local_rows = local_rows * owned.unsqueeze(-1).to(local_rows.dtype)
        hidden = copy_to_tensor_model_parallel_region(hidden)
        # float32 product: the loss is a softmax over the *difference* of two logits, which
        # bf16 (8 mantissa bits) rounds away when both are large; the product is tiny ([n, 2]).
        logits = hidden.float() @ local_rows.float().t()
        return reduce_from_tensor_model_parallel_region(logits)


class ScalarHead(MegatronModule):
    """``hidden -> 1`` linear layer, replicated across tensor-parallel ranks."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config=config)
        self.linear = torch.nn.Linear(config.hidden_size, 1, bias=True, dtype=config.params_dtype)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, config.init_method_std)
            self.linear.bias.zero_()
        for p in self.linear.parameters():
            # A replicated (not tensor-parallel) parameter: megatron keeps one copy per TP rank.
            setattr(p, "tensor_model_parallel", False)
            setattr(p, "sequence_parallel", False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, h]`` -> ``[n]`` step logits."""
        return self.linear(hidden).squeeze(-1)
