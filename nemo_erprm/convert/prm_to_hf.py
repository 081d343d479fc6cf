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
from nemo_erprm.convert.checks import check_export_args
from nemo_erprm.convert.load import load_prm_modules, read_prm_meta
from nemo_erprm.errors import ConfigError

PRM_CONFIG_FILE = "prm_config.json"


# Every PRM config class of nemo_erprm.nemo.config -> NeMo's HF exporter of its backbone
# ("module:Class"), or why it has none. Looked up by exact class, not isinstance: our Llama-3
# configs derive from NeMo's Llama3Config/Llama31Config, not from ERPRMLlamaConfig.
# tests/convert/test_export_table.py walks every config class through this table.
_LLAMA = "nemo.collections.llm.gpt.model.llama:HFLlamaExporter"
HF_EXPORTERS: dict[str, str] = {
    "ERPRMLlamaConfig": _LLAMA,  # Llama-2, DeepSeek-math, SmolLM2: rope_scaling null
    "ERPRMLlama3Config": _LLAMA,  # Llama-3.0: no RoPE scaling (NeMo's Llama3Config applies none)
    # Llama-3.1/3.2: NeMo's exporter writes rope_scaling {rope_type: llama3, factor, low_freq_factor,
    # high_freq_factor, original_max_position_embeddings} for any Llama31Config (llama.py, NeMo 2.7.3)
    "ERPRMLlama31Config": _LLAMA,
    "ERPRMMistralConfig": "nemo.collections.llm.gpt.model.mistral:HFMistralExporter",
    "ERPRMQwen2Config": "nemo.collections.llm.gpt.model.qwen2:HFQwen2Exporter",
}
NO_HF_EXPORT: dict[str, str] = {
    "ERPRMGPTConfig": ("a generic GPT backbone has no Hugging Face architecture here (export handles the "
                       "llama, llama3, llama31, mistral and qwen2 families)"),
}


def hf_exporter_class(cfg: Any, ckpt: Path) -> type:
    """NeMo's HF exporter for ``cfg``'s family (:data:`HF_EXPORTERS`)."""
    import importlib

    name = type(cfg).__name__
    if name not in HF_EXPORTERS:
        why = NO_HF_EXPORT.get(name, "not a PRM config family of nemo_erprm.nemo.config")
        raise ConfigError(f"{ckpt}: no HF exporter for {name}: {why}")
    module, cls = HF_EXPORTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def hf_config_for(ckpt: Path, cfg: Any, vocab_rows: int):
    """The transformers config of the backbone, translated by NeMo's exporter of the family."""
    hf_cfg = hf_exporter_class(cfg, ckpt)(str(ckpt)).config
    hf_cfg.tie_word_embeddings = bool(cfg.share_embeddings_and_output_weights)
    hf_cfg.vocab_size = vocab_rows  # the embedding's rows (padded when the config left vocab_size unset)
    return hf_cfg


def _progress(message: str) -> None:
    print(message, flush=True)


def export_prm_to_hf(ckpt: str, out_dir: str, overwrite: bool = False) -> Path:
    """Export ``ckpt`` (a PRM checkpoint dir) to an HF model directory ``out_dir``.

    Written into a temporary folder beside ``out_dir`` and renamed into place when complete;
    an existing ``out_dir`` is refused unless ``overwrite`` (then swapped atomically)."""
    from nemo_erprm.runtime.outdir import atomic_output_dir

    check_export_args(ckpt, out_dir, overwrite)
    if not torch.cuda.is_available():
        from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

        enable_cpu_backend()
    from nemo.lightning.io.state import apply_transforms
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    ckpt_path, out = Path(ckpt), Path(out_dir)
    _progress(f"[1/4] loading {ckpt_path}")
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
    _progress(f"[2/4] mapping the weights to {type(target).__name__}")
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
    with atomic_output_dir(out, overwrite) as tmp:
        _progress(f"[3/4] writing weights to {tmp}")
        target.save_pretrained(tmp, safe_serialization=True)
        _progress("[4/4] writing the tokenizer")
        save_clean_tokenizer(getattr(tokenizer, "tokenizer", tokenizer), tmp)
        (tmp / PRM_CONFIG_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    _progress(f"HF PRM written to {out} ({type(target).__name__})")
    return out


# Texts on which the exported tokenizer (fast, and slow where written) must give the training
# tokenizer's ids: digits, spaces, tabs, newlines, non-Latin text, the default step tag.
_PROBE_TEXTS = ("What is 2+3? ки 12.50 + 1234567 = 20.5\n#### 72", "  two spaces\ttab\n\nblank line ки",
                "Ünïcödé 漢字 🚀 ки", "The answer is $\\frac{1}{2}$.")


def _is_sentencepiece_model(path: Path) -> bool:
    """A GGUF file saved under the sentencepiece name is what transformers writes for a
    tokenizer read from GGUF; sentencepiece cannot parse it."""
    with open(path, "rb") as f:
        return f.read(4) != b"GGUF"


def _byte_level_bpe(hf_tok: Any) -> bool:
    backend = json.loads(hf_tok.backend_tokenizer.to_str())
    pre = backend.get("pre_tokenizer") or {}
    return backend["model"]["type"] == "BPE" and pre.get("type") == "ByteLevel"


def save_clean_tokenizer(hf_tok: Any, out: Path) -> str:
    """Save ``hf_tok`` as a plain HF tokenizer that loads fast (and slow where the family has
    one) with the same ids; returns the slow class or ``"none"``.

    A tokenizer read from GGUF names the GGUF file as its ``tokenizer.model``: that file is
    dropped; a byte-level BPE (SmolLM2, Qwen2, Llama 3) is saved as GPT-2 style files
    (``vocab.json`` + ``merges.txt``) so ``use_fast=False`` works as well."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    hf_tok.save_pretrained(out)
    sp_model = out / "tokenizer.model"
    if sp_model.exists() and not _is_sentencepiece_model(sp_model):
        sp_model.unlink()
        if _byte_level_bpe(hf_tok):
            from tokenizers import Tokenizer, decoders

            backend = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
            backend.decoder = decoders.ByteLevel()  # GGUF's decoder chain leaves 'Ġ' in decoded text
            special = {k: v for k, v in hf_tok.special_tokens_map.items() if k != "additional_special_tokens"}
            gpt2 = GPT2TokenizerFast(tokenizer_object=backend, add_bos_token=hf_tok("a")["input_ids"][0] == hf_tok.bos_token_id,
                                     additional_special_tokens=hf_tok.special_tokens_map.get("additional_special_tokens", []),
                                     **special)
            gpt2.chat_template = hf_tok.chat_template
            for f in out.iterdir():
                if f.name.startswith(("tokenizer", "special_tokens", "added_tokens")):
                    f.unlink()
            gpt2.save_pretrained(out)
        else:
            config = json.loads((out / "tokenizer_config.json").read_text())
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    want = [hf_tok(t)["input_ids"] for t in _PROBE_TEXTS]
    fast = AutoTokenizer.from_pretrained(str(out))
    if [fast(t)["input_ids"] for t in _PROBE_TEXTS] != want:
        raise ConfigError(f"{out}: the exported tokenizer gives other token ids than the checkpoint's")
    slow = AutoTokenizer.from_pretrained(str(out), use_fast=False)
    if slow.is_fast:
        return "none"
    if [slow(t)["input_ids"] for t in _PROBE_TEXTS] != want:
        raise ConfigError(f"{out}: the exported slow tokenizer {type(slow).__name__} gives other token ids")
    return type(slow).__name__
