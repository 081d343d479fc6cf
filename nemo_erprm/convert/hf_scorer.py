"""Score solutions with an exported HF PRM (transformers only: no NeMo, no megatron).

    scorer = HFPRMScorer("exported_prm/")
    scorer.score("What is 2+3?", ["2 plus 3 is 5.", "#### 5"])   # -> [P(step 1 good), P(step 2 good)]

The input is rendered exactly as in training (:func:`nemo_erprm.labeling.render_prm_input`),
all steps of a solution are scored in one forward, micro-batches of similar length are
right-padded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from nemo_erprm.data.collate import length_sorted_batches
from nemo_erprm.data.tokenize import StepTokenizer
from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.segmentation import render_prm_input


class HFPRMScorer:
    def __init__(self, model_dir: str, device: str | None = None, dtype: torch.dtype | None = None,
                 max_length: int = 4096, micro_batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

        path = Path(model_dir)
        meta_path = path / "prm_config.json"
        if not meta_path.exists():
            raise ConfigError(f"{path}: no prm_config.json (export with tools/export_hf_checkpoint.py)")
        self.meta = json.loads(meta_path.read_text())
        self.head = self.meta["head"]
        self.step_tag = self.meta["step_tag"]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cls = AutoModelForCausalLM if self.head == "lm_tokens" else AutoModelForTokenClassification
        self.model = cls.from_pretrained(str(path), dtype=dtype or "auto").to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.step_tokenizer = StepTokenizer(self.tokenizer, self.step_tag, max_length)
        self.micro_batch_size = micro_batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.head == "lm_tokens":
            self.label_ids = torch.tensor([self.meta["plus_token_id"], self.meta["minus_token_id"]], device=self.device)

    @torch.no_grad()
    def score_batch(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """P(good) per step for each ``(question, steps)``, in micro-batches of similar length;
        steps beyond ``max_length`` are cut."""
        encoded = []
        for question, steps in items:
            text = render_prm_input(question, steps, self.step_tag)
            ex = self.step_tokenizer(text, [0.0] * len(steps))
            if ex is None:
                raise ConfigError(f"no step of {question[:40]!r}... fits in {self.step_tokenizer.seq_length} tokens")
            encoded.append(ex)
        out: list[list[float]] = [[] for _ in encoded]
        for idx in length_sorted_batches([len(e.input_ids) for e in encoded], self.micro_batch_size):
            for i, scores in zip(idx, self._forward([encoded[i] for i in idx])):
                out[i] = scores
        return out

    def _forward(self, encoded: list) -> list[list[float]]:
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            att[i, : len(e.input_ids)] = 1
        ids, att = ids.to(self.device), att.to(self.device)
        rows = torch.tensor([i for i, e in enumerate(encoded) for _ in e.tag_positions], device=self.device)
        cols = torch.tensor([p for e in encoded for p in e.tag_positions], device=self.device)
        if self.head == "lm_tokens":
            # only the two label rows of the LM head, only at the tags: the full-vocabulary logits
            # of every position would cost as much as a few transformer layers
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=att).last_hidden_state[rows, cols]
            at = (hidden @ self.model.get_output_embeddings().weight[self.label_ids].T).float()
            scores = torch.softmax(at, dim=-1)[:, 0]
        else:
            scores = torch.sigmoid(self.model(input_ids=ids, attention_mask=att).logits[rows, cols, 0].float())
        flat, out, start = scores.cpu().tolist(), [], 0
        for e in encoded:  # tags come out row by row, in position order
            out.append(flat[start: start + len(e.tag_positions)])
            start += len(e.tag_positions)
        return out

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(question, steps)])[0]
