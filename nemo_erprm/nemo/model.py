"""`ERPRMModel`: the NeMo 2 model class of the ER-PRM (a subclass of `llm.GPTModel`).

NeMo's Trainer, MegatronStrategy (TP/PP/VPP/DP, distributed optimizer), mixed precision,
checkpointing and AutoResume work unchanged; we replace the megatron module (see
`ERPRMConfigMixin.configure_model`), the forward signature (step masks instead of labels)
and the loss reduction.
"""

from __future__ import annotations

from typing import Optional

import torch
from nemo.collections.llm.gpt.model.base import GPTModel

from nemo_erprm.nemo.loss_reduction import ERLossReduction


class ERPRMModel(GPTModel):
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        step_mask: Optional[torch.Tensor] = None,
        packed_seq_params=None,
        **unused,
    ) -> torch.Tensor:
        return self.module(
            input_ids, position_ids, attention_mask, step_mask=step_mask, packed_seq_params=packed_seq_params
        )

    @property
    def training_loss_reduction(self) -> ERLossReduction:
        if not self._training_loss_reduction:
            self._training_loss_reduction = ERLossReduction(self.config.head)
        return self._training_loss_reduction

    @property
    def validation_loss_reduction(self) -> ERLossReduction:
        if not self._validation_loss_reduction:
            self._validation_loss_reduction = ERLossReduction(self.config.head, validation_step=True)
        return self._validation_loss_reduction
