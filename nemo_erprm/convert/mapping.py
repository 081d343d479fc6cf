"""Weight maps between Hugging Face Llama-family checkpoints and our megatron PRM.

Llama, Mistral, Qwen2 (and DeepSeek-math, SmolLM2: Llama-shaped) share HF tensor names. The
megatron side differs by layer spec: with Transformer Engine the per-layer norms are fused
into the following linear (``linear_qkv.layer_norm_weight``, ``linear_fc1.layer_norm_weight``);
with the local spec they are modules of their own (``input_layernorm``, ``pre_mlp_layernorm``).
NeMo's stock importers always use the TE names and, on a machine without TE, silently skip
the norms; these maps pick the names from the target model itself. Transforms (q/k/v
interleaving, gate/up concatenation) are NeMo's ``TransformFns``.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable

HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
# HF buffers that are derived, not learned
IGNORED_SOURCE = ("*.rotary_emb.inv_freq",)


def norm_names(target_keys: Iterable[str]) -> tuple[str, str]:
    """(input norm, pre-MLP norm) megatron key patterns for this model's layer spec."""
    keys = set(target_keys)
    if any(k.endswith("self_attention.linear_qkv.layer_norm_weight") for k in keys):
        return ("decoder.layers.*.self_attention.linear_qkv.layer_norm_weight",
                "decoder.layers.*.mlp.linear_fc1.layer_norm_weight")
    return "decoder.layers.*.input_layernorm.weight", "decoder.layers.*.pre_mlp_layernorm.weight"


def hf_to_megatron_mapping(target_keys: Iterable[str], tied: bool) -> dict[str, str]:
    """Plain renames HF -> megatron (q/k/v and gate/up are transforms, see below)."""
    input_norm, mlp_norm = norm_names(target_keys)
    mapping = {
        "model.embed_tokens.weight": "embedding.word_embeddings.weight",
        "model.layers.*.self_attn.o_proj.weight": "decoder.layers.*.self_attention.linear_proj.weight",
        "model.layers.*.input_layernorm.weight": input_norm,
        "model.layers.*.post_attention_layernorm.weight": mlp_norm,
        "model.layers.*.mlp.down_proj.weight": "decoder.layers.*.mlp.linear_fc2.weight",
        "model.norm.weight": "decoder.final_layernorm.weight",
    }
    if not tied:
        mapping["lm_head.weight"] = "output_layer.weight"
    return mapping


def hf_to_megatron_transforms(qkv_bias: bool) -> list:
    from nemo.lightning import io
    from nemo.lightning.io.state import TransformFns

    transforms = [
        io.state_transform(
            source_key=("model.layers.*.self_attn.q_proj.weight", "model.layers.*.self_attn.k_proj.weight",
                        "model.layers.*.self_attn.v_proj.weight"),
            target_key="decoder.layers.*.self_attention.linear_qkv.weight",
            fn=TransformFns.merge_qkv,
        ),
        io.state_transform(
            source_key=("model.layers.*.mlp.gate_proj.weight", "model.layers.*.mlp.up_proj.weight"),
            target_key="decoder.layers.*.mlp.linear_fc1.weight",
            fn=TransformFns.merge_fc1,
        ),
    ]
    if qkv_bias:
        transforms.append(io.state_transform(
            source_key=("model.layers.*.self_attn.q_proj.bias", "model.layers.*.self_attn.k_proj.bias",
                        "model.layers.*.self_attn.v_proj.bias"),
            target_key="decoder.layers.*.self_attention.linear_qkv.bias",
            fn=TransformFns.merge_qkv_bias,
        ))
    return transforms


def megatron_to_hf_mapping(source_keys: Iterable[str], tied: bool) -> dict[str, str]:
    return {v: k for k, v in hf_to_megatron_mapping(source_keys, tied).items()}


def megatron_to_hf_transforms(qkv_bias: bool) -> list:
    from nemo.lightning import io
    from nemo.lightning.io.state import TransformFns

    transforms = [
        io.state_transform(
            source_key="decoder.layers.*.self_attention.linear_qkv.weight",
            target_key=("model.layers.*.self_attn.q_proj.weight", "model.layers.*.self_attn.k_proj.weight",
                        "model.layers.*.self_attn.v_proj.weight"),
            fn=TransformFns.split_qkv,
        ),
        io.state_transform(
            source_key="decoder.layers.*.mlp.linear_fc1.weight",
            target_key=("model.layers.*.mlp.gate_proj.weight", "model.layers.*.mlp.up_proj.weight"),
            fn=TransformFns.split_fc1,
        ),
    ]
    if qkv_bias:
        transforms.append(io.state_transform(
            source_key="decoder.layers.*.self_attention.linear_qkv.bias",
            target_key=("model.layers.*.self_attn.q_proj.bias", "model.layers.*.self_attn.k_proj.bias",
                        "model.layers.*.self_attn.v_proj.bias"),
            fn=TransformFns.split_qkv_bias,
        ))
    return transforms


def uncovered_keys(keys: Iterable[str], mapping: dict[str, str], transforms: list,
                   ignored: Iterable[str] = IGNORED_SOURCE) -> list[str]:
    """Source keys that no rename or transform reads (they would be silently dropped)."""
    patterns = list(mapping) + list(ignored)
    for t in transforms:
        src = t.source_key
        patterns += list(src) if isinstance(src, tuple) else [src]
    return [k for k in keys if not any(fnmatch.fnmatchcase(k, p) for p in patterns)]
