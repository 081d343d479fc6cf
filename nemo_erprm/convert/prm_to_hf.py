"""Trained PRM checkpoint (any TP/PP) -> Hugging Face model directory.

- ``lm_tokens`` head -> the family's ``...ForCausalLM``: the backbone unchanged; use it like
  Math-Shepherd's PRM, P(good) = softmax over the logits of the ``+``/``-`` tokens at each tag.
- ``scalar`` head -> the family's ``...ForTokenClassification`` with ``num_labels=1``
  (``score`` = our step head); P(good) = sigmoid of the logit at each tag.

Writes safetensors, ``config.json``, the tokenizer and ``prm_config.json`` (head, step tag
and token ids, recommended aggregation). The HF config comes from NeMo's exporter of the
family; the weight map is :mod:`nemo_erprm.convert.mapping` (inverse of the import).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nemo_erprm.convert import mapping as M
from nemo_erprm.convert.load import load_prm_modules, read_prm_meta
from nemo_erprm.errors import ConfigError

PRM_CONFIG_FILE = "prm_config.json"


def hf_config_for(ckpt: Path, cfg: Any, vocab_rows: int):
    """The transformers config of the backbone, translated by NeMo's exporter of the family."""
    from nemo_erprm.nemo import config as C

    if isinstance(cfg, C.ERPRMQwen2Config):
        from nemo.collections.llm.gpt.model.qwen2 import HFQwen2Exporter as Exporter
    elif isinstance(cfg, C.ERPRMMistralConfig):
        from nemo.collections.llm.gpt.model.mistral import HFMistralExporter as Exporter
    elif isinstance(cfg, C.ERPRMLlamaConfig):
        from nemo.collections.llm.gpt.model.llama import HFLlamaExporter as Exporter
    else:
        raise ConfigError(f"{ckpt}: no HF exporter for {type(cfg).__name__}")
    hf_cfg = Exporter(str(ckpt)).config
    hf_cfg.tie_word_embeddings = bool(cfg.share_embeddings_and_output_weights)
    hf_cfg.vocab_size = vocab_rows  # the embedding's rows (padded when the config left vocab_size unset)
    return hf_cfg


def export_prm_to_hf(ckpt: str, out_dir: str) -> Path:
    """Export ``ckpt`` (a PRM checkpoint dir) to an HF model directory ``out_dir``."""
    if not torch.cuda.is_available():
        from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

        enable_cpu_backend()
    from nemo.lightning.io.state import apply_transforms
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    ckpt_path, out = Path(ckpt), Path(out_dir)
    modules, cfg, tokenizer = load_prm_modules(ckpt_path, 1, 1)
    module = modules[0]
    hf_cfg = hf_config_for(ckpt_path, cfg, module.embedding.word_embeddings.weight.shape[0])
    tied = bool(cfg.share_embeddings_and_output_weights)
    mapping = M.megatron_to_hf_mapping(module.state_dict().keys(), tied)
    transforms = M.megatron_to_hf_transforms(qkv_bias=getattr(cfg, "add_qkv_bias", False))
    ignored: list[str] = []
    if cfg.head == "lm_tokens":
        # Map into an untied model (one target per tensor), tie again before saving.
        hf_cfg.tie_word_embeddings = False
        target = AutoModelForCausalLM.from_config(hf_cfg, dtype=cfg.params_dtype)
        if tied:
            from nemo.lightning import io

            transforms.append(io.state_transform(
                source_key="embedding.word_embeddings.weight", target_key="lm_head.weight",
                fn=lambda ctx, embedding: embedding))
    else:
        hf_cfg.num_labels = 1
        hf_cfg.classifier_dropout = 0.0
        target = AutoModelForTokenClassification.from_config(hf_cfg, dtype=cfg.params_dtype)
        mapping = {k: v for k, v in mapping.items() if k != "output_layer.weight"}  # no LM head in this class
        mapping.update({"step_head.linear.weight": "score.weight", "step_head.linear.bias": "score.bias"})
    print(f"mapping {ckpt_path} -> {type(target).__name__}")
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(float("nan"))
    apply_transforms(module, target, mapping=mapping, transforms=transforms, state_dict_ignored_entries=ignored)
    if tied and cfg.head == "lm_tokens":
        target.config.tie_word_embeddings = True
        target.tie_weights()
    missing = [n for n, p in target.named_parameters() if torch.isnan(p).any()]
    if missing:
        raise ConfigError(f"{ckpt_path}: nothing mapped to HF tensor(s) {missing[:8]}")
    out.mkdir(parents=True, exist_ok=True)
    target.save_pretrained(out, safe_serialization=True)
    hf_tok = getattr(tokenizer, "tokenizer", tokenizer)
    hf_tok.save_pretrained(out)
    meta = read_prm_meta(ckpt_path)
    meta.update({
        "head": cfg.head,
        "step_tag": cfg.step_tag,
        "step_tag_id": cfg.step_tag_id,
        "plus_token_id": cfg.plus_token_id,
        "minus_token_id": cfg.minus_token_id,
        "hf_class": type(target).__name__,
        "recommended_aggregation": meta.get("recommended_aggregation", "min"),
        "score": ("softmax over logits[plus_token_id, minus_token_id] at each step tag, P(+)"
                  if cfg.head == "lm_tokens" else "sigmoid(logits[..., 0]) at each step tag"),
    })
    (out / PRM_CONFIG_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    print(f"HF PRM written to {out} ({type(target).__name__})")
    return out
