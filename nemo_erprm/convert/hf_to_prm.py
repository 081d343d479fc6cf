"""HF checkpoint (directory or GGUF) -> NeMo 2 checkpoint of our `ERPRMModel`.

NeMo's family importers translate the HF config (RoPE scaling, sliding window, ...) and set
up the NeMo trainer/strategy (`nemo_setup`); the target model is built on the meta device and
takes the converted tensors as its parameters; the weights are written with megatron's dist
checkpointing and the io context with NeMo's `TrainerContext` (:func:`save_prm_checkpoint`).
The weight map is ours (:mod:`nemo_erprm.convert.mapping`) because the stock one drops the
layer norms without Transformer Engine. Every megatron parameter must be filled from the source and
every source tensor must be used, else the conversion fails naming the tensor. The
`lm_tokens` head needs no weights of its own (it reads the LM head rows); the `scalar` head
starts as documented in :mod:`nemo_erprm.model.heads`.

The checkpoint is a megatron dist checkpoint: it loads at any TP/PP (resharded on load).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Optional

import torch

from nemo_erprm.errors import ConfigError
from nemo_erprm.convert import mapping as M

PRM_CONFIG_FILE = "prm_config.json"


def materialize_hf_dir(source: str, workdir: Path) -> Path:
    """An HF directory for ``source``: itself, or a GGUF (file or 'smollm2') re-saved as safetensors."""
    from nemo_erprm.embedded import resolve_model_path

    where, gguf = resolve_model_path(source)
    if gguf is None:
        if not (Path(where) / "config.json").exists():
            raise ConfigError(f"{where}: not a Hugging Face model directory (no config.json)")
        return Path(where)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = workdir / "hf_from_gguf"
    print(f"reading GGUF {Path(where) / gguf} through transformers (dequantized to float32)")
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    return out


def hf_file_tensors(hf_dir: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors stored in an HF directory's safetensors (single or sharded)."""
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{hf_dir}: no *.safetensors files (only safetensors checkpoints are read)")
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                out[k] = tuple(st.get_slice(k).get_shape())
    return out


class SafetensorsState(Mapping):
    """The tensors of an HF directory as a read-on-access mapping (NeMo's transforms take a
    mapping), cast to ``dtype``. Nothing is cached and each read opens the file anew, so the
    conversion holds one copy of the model (the converted one) plus the tensors in flight,
    not the source model as well."""

    def __init__(self, hf_dir: Path, dtype: torch.dtype, skip: tuple[str, ...] = ()):
        from safetensors import safe_open

        self.dtype = dtype
        self._file: dict[str, str] = {}
        for f in sorted(hf_dir.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                self._file.update({k: str(f) for k in st.keys() if k not in skip})

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self._file[key], framework="pt") as st:  # closing unmaps the file
            tensor = st.get_tensor(key)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def __iter__(self):
        return iter(self._file)

    def __len__(self) -> int:
        return len(self._file)


def checkpoint_dtype(hf_dir: Path, hf_cfg: Any) -> torch.dtype:
    """The dtype transformers' ``dtype="auto"`` picks: the config's, else the first float tensor's."""
    from safetensors import safe_open

    declared = getattr(hf_cfg, "dtype", None) or getattr(hf_cfg, "torch_dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    if isinstance(declared, torch.dtype):
        return declared
    for f in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                t = st.get_slice(k)
                dt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(t.get_dtype())
                if dt is not None:
                    return dt
    return torch.float32


def check_hf_tensors(hf_dir: Path, hf_cfg: Any) -> None:
    """Before loading: fail naming the tensor when the files miss a tensor of the architecture,
    hold an unexpected one, or one of another shape (transformers would fill some silently)."""
    from transformers import AutoModelForCausalLM

    stored = hf_file_tensors(hf_dir)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_cfg)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tied = bool(getattr(hf_cfg, "tie_word_embeddings", False))
    optional = {"lm_head.weight"} if tied else set()
    missing = sorted(k for k in expected if k not in stored and k not in optional and not k.endswith("inv_freq"))
    unexpected = sorted(k for k in stored if k not in expected)
    if missing:
        raise ConfigError(f"{hf_dir}: missing tensor(s) {missing[:8]} for {type(skeleton).__name__}")
    if unexpected:
        raise ConfigError(f"{hf_dir}: unexpected tensor(s) {unexpected[:8]} for {type(skeleton).__name__}")
    wrong = [(k, stored[k], expected[k]) for k in stored if stored[k] != expected[k]]
    if wrong:
        k, got, want = wrong[0]
        raise ConfigError(f"{hf_dir}: tensor {k} has shape {list(got)}, the config implies {list(want)}")


def importer_for(hf_dir: Path):
    """NeMo's importer for this HF architecture (config translation, trainer setup, saving)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(hf_dir))
    family = M.MODEL_TYPES.get(getattr(cfg, "model_type", ""))
    if family is None:
        archs = getattr(cfg, "architectures", None)
        raise ConfigError(
            f"{hf_dir}: unsupported architecture {archs or cfg.model_type!r}; supported: "
            f"{sorted(M.HF_ARCHITECTURES)} (DeepSeek-math and SmolLM2 are LlamaForCausalLM)"
        )
    if family == "llama":
        from nemo.collections.llm.gpt.model.llama import HFLlamaImporter as Importer
    elif family == "mistral":
        from nemo.collections.llm.gpt.model.mistral import HFMistralImporter as Importer
    else:
        from nemo.collections.llm.gpt.model.qwen2 import HFQwen2Importer as Importer
    importer = Importer(str(hf_dir))
    importer.trust_remote_code = False  # some importers read it; local checkpoints never run remote code
    return importer, cfg


def prm_config_from_base(base_cfg: Any, hf_cfg: Any, **prm_fields: Any):
    """Our family config with every field of NeMo's translated config, plus the PRM fields."""
    from nemo.collections.llm.gpt.model.llama import Llama31Config, LlamaConfig
    from nemo.collections.llm.gpt.model.mistral import MistralConfig7B
    from nemo.collections.llm.gpt.model.qwen2 import Qwen2Config

    from nemo_erprm.nemo import config as C

    classes = [(Llama31Config, C.ERPRMLlama31Config), (LlamaConfig, C.ERPRMLlamaConfig),
               (MistralConfig7B, C.ERPRMMistralConfig), (Qwen2Config, C.ERPRMQwen2Config)]
    target_cls = next((ours for theirs, ours in classes if isinstance(base_cfg, theirs)), None)
    if target_cls is None:
        raise ConfigError(f"no PRM config for NeMo config {type(base_cfg).__name__}")
    # our mixin's fields (steps, loss normalisation, layer-spec switch) are never taken from NeMo's
    skip = {"transformer_layer_spec", "generation_config"} | {f.name for f in fields(C.ERPRMConfigMixin)}
    kwargs = {f.name: getattr(base_cfg, f.name) for f in fields(base_cfg) if f.init and f.name not in skip}
    kwargs["vocab_size"] = hf_cfg.vocab_size  # embedding rows, not the tokenizer's length
    kwargs["share_embeddings_and_output_weights"] = bool(getattr(hf_cfg, "tie_word_embeddings", False))
    from nemo_erprm.model.build import have_transformer_engine

    # megatron's own `transformer_impl` field is our layer-spec switch: TE where installed
    kwargs["transformer_impl"] = "transformer_engine" if have_transformer_engine() else "local"
    if target_cls is C.ERPRMLlama31Config:
        kwargs.update(llama3_rope_scaling(hf_cfg))
    kwargs.update(prm_fields)
    return target_cls(**kwargs)


def rope_scaling_type(hf_cfg: Any) -> Optional[str]:
    """The HF config's RoPE scaling type (``rope_type``, or the legacy ``type``); None without one."""
    scaling = getattr(hf_cfg, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    return None if kind in (None, "default") else kind


def check_rope_scaling(hf_dir: Path, hf_cfg: Any) -> None:
    """NeMo's importers translate only Llama's ``llama3`` RoPE scaling; any other type (linear,
    dynamic, yarn, ...) they drop without a word, and the PRM would compute other logits."""
    kind = rope_scaling_type(hf_cfg)
    if kind is not None and not (kind == "llama3" and M.MODEL_TYPES.get(hf_cfg.model_type) == "llama"):
        raise ConfigError(f"{hf_dir}/config.json: rope_scaling type {kind!r} is not supported "
                          f"(only 'llama3' on Llama models)")


def llama3_rope_scaling(hf_cfg: Any) -> dict[str, Any]:
    """Every factor of an HF ``llama3`` RoPE scaling as Llama31Config fields. NeMo 2.7.3's
    importer (``HFLlamaImporter.config``) reads only ``factor`` and leaves the rest at Llama-3.1's
    values (1, 4, 8192); its exporter writes all four back, so a round trip keeps them."""
    scaling = hf_cfg.rope_scaling
    return {"scale_factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
            "high_freq_factor": scaling["high_freq_factor"],
            "old_context_len": scaling["original_max_position_embeddings"]}


def resolve_tokens(tokenizer: Any, step_tag: str, head: str, plus: str, minus: str,
                   add_step_tag_token: bool) -> dict[str, Any]:
    """Step tag and label token ids of this tokenizer (see :mod:`nemo_erprm.data.tokenize`)."""
    from nemo_erprm.data.tokenize import StepTagTokenError, add_step_tag_token as add_tag, single_token_id, step_tag_id

    added = False
    try:
        tag_id = step_tag_id(tokenizer, step_tag, add_token_hint="--add-step-tag-token")
    except StepTagTokenError:
        if not add_step_tag_token:
            raise
        add_tag(tokenizer, step_tag)
        added = True
        tag_id = step_tag_id(tokenizer, step_tag)
    out: dict[str, Any] = {"step_tag": step_tag, "step_tag_id": tag_id, "step_tag_added": added}
    if head == "lm_tokens":
        for name, text in (("plus", plus), ("minus", minus)):
            tid = single_token_id(tokenizer, text)
            if tid is None:
                raise ConfigError(f"--{name}-token {text!r} is not a single token of this tokenizer")
            out[f"{name}_token"], out[f"{name}_token_id"] = text, tid
    return out


def _own_storages_releasing_params(sharded: dict, module: torch.nn.Module) -> None:
    """Give each tensor to be saved its own storage, one parameter at a time, and free the
    parameter it came from (the model is consumed by saving).

    megatron's writer clones every tensor that is a view (e.g. the two SwiGLU halves of each
    ``linear_fc1``) before writing, all at once: +0.4x the model on SmolLM2. Cloning here, and
    dropping each parameter as soon as its last view is copied, keeps the extra to one tensor."""
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    apply_factories(sharded)
    leaves: list[ShardedTensor] = []

    def collect(x: Any) -> Any:
        if isinstance(x, ShardedTensor):
            leaves.append(x)
        return x

    dict_list_map_inplace(collect, sharded)

    def is_view(t: torch.Tensor) -> bool:
        return t.untyped_storage().size() != t.numel() * t.element_size()

    owners = {p.untyped_storage().data_ptr(): p for p in module.parameters()}
    pending: dict[int, int] = {}
    for leaf in leaves:
        if is_view(leaf.data):
            ptr = leaf.data.untyped_storage().data_ptr()
            pending[ptr] = pending.get(ptr, 0) + 1
    for leaf in leaves:
        if not is_view(leaf.data):
            continue
        ptr = leaf.data.untyped_storage().data_ptr()
        leaf.data = leaf.data.detach().clone()
        pending[ptr] -= 1
        if pending[ptr] == 0 and ptr in owners:
            owners[ptr].data = torch.empty(0, dtype=owners[ptr].dtype)


def save_prm_checkpoint(model: Any, trainer: Any, out: Path) -> None:
    """Write ``out/weights`` (megatron dist checkpoint, keys ``module.*`` as NeMo writes them)
    and ``out/context`` (NeMo's io context: config, tokenizer). The model's parameters are
    released while saving: do not use ``model`` afterwards.

    The weights are saved directly with megatron's dist-checkpoint writer rather than through
    the trainer (`nemo_save`), whose training setup and async writers cost ~0.4 GB more PSS
    on SmolLM2 (measured with benchmarks/convert_memory.py)."""
    from megatron.core import dist_checkpointing
    from nemo.lightning.ckpt_utils import ckpt_to_context_subdir
    from nemo.lightning.io.pl import TrainerContext

    weights = out / "weights"
    if weights.exists() and any(weights.iterdir()):
        raise ConfigError(f"{out}: already holds a checkpoint; choose another --out")
    weights.mkdir(parents=True, exist_ok=True)
    sharded = model.module.sharded_state_dict(prefix="module.")
    _own_storages_releasing_params(sharded, model.module)
    dist_checkpointing.save(sharded, str(weights))
    TrainerContext.from_trainer(trainer).io_dump(ckpt_to_context_subdir(out), yaml_attrs=["model"])


def convert_hf_to_prm(
    source: str,
    out_dir: str,
    *,
    head: str = "lm_tokens",
    step_tag: str = "ки",
    add_step_tag_token: bool = False,
    plus_token: str = "+",
    minus_token: str = "-",
    tp: int = 1,
    pp: int = 1,
    dtype: Optional[str] = None,
) -> Path:
    """Convert ``source`` (HF dir, .gguf file or 'smollm2') into a PRM checkpoint at ``out_dir``."""
    if head not in ("lm_tokens", "scalar"):
        raise ConfigError(f"--head must be lm_tokens or scalar, got {head!r}")
    if not torch.cuda.is_available():
        from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

        enable_cpu_backend()
    from nemo.lightning.io.api import load_context  # noqa: F401  (NeMo must import before its connectors)
    from nemo.lightning.io.state import _ModelState, apply_transforms
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_erprm.nemo.model import ERPRMModel

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"[1/4] reading {source}", flush=True)
        hf_dir = materialize_hf_dir(source, Path(tmp))
        importer, hf_cfg = importer_for(hf_dir)  # unsupported architectures fail here
        check_rope_scaling(hf_dir, hf_cfg)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        except (OSError, TypeError, ValueError) as e:
            raise ConfigError(f"{hf_dir}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
        tokens = resolve_tokens(tokenizer, step_tag, head, plus_token, minus_token, add_step_tag_token)
        check_hf_tensors(hf_dir, hf_cfg)
        if tokens["step_tag_added"]:
            # The tag became a new special token: one more embedding row (mean-initialised by HF).
            hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype="auto")
            hf_model.resize_token_embeddings(len(tokenizer))
            hf_dir = Path(tmp) / "hf_with_tag"
            hf_model.save_pretrained(hf_dir, safe_serialization=True)
            tokenizer.save_pretrained(hf_dir)
            del hf_model
            importer, hf_cfg = importer_for(hf_dir)  # the importer reads the resized directory
        params_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
        params_dtype = params_dtype or checkpoint_dtype(hf_dir, hf_cfg)
        base = importer.config
        n_heads = base.num_attention_heads
        if n_heads % tp or base.num_layers % pp:
            raise ConfigError(f"--tp {tp} must divide {n_heads} attention heads and --pp {pp} "
                              f"{base.num_layers} layers")
        cfg = prm_config_from_base(
            base, hf_cfg, head=head, step_tag=step_tag, step_tag_id=tokens["step_tag_id"],
            plus_token_id=tokens.get("plus_token_id"), minus_token_id=tokens.get("minus_token_id"),
            params_dtype=params_dtype, pipeline_dtype=params_dtype, bf16=params_dtype == torch.bfloat16,
            fp16=params_dtype == torch.float16,
        )
        print(f"[2/4] building the {type(cfg).__name__} PRM ({head} head)", flush=True)
        # Build the target on the meta device: converted tensors become its parameters, so the
        # backbone is never allocated twice (see benchmarks/convert_memory.py).
        cfg.init_model_with_meta_device = True
        target = ERPRMModel(cfg, tokenizer=importer.tokenizer)
        trainer = importer.nemo_setup(target)
        cfg.init_model_with_meta_device = False  # the saved config builds real weights
        module = target.module
        target_keys = list(module.state_dict().keys())
        mapping = M.hf_to_megatron_mapping(target_keys, cfg.share_embeddings_and_output_weights)
        transforms = M.hf_to_megatron_transforms(qkv_bias=bool(getattr(hf_cfg, "attention_bias", False))
                                                 or M.MODEL_TYPES[hf_cfg.model_type] == "qwen2")
        tied = cfg.share_embeddings_and_output_weights
        # when tied, lm_head.weight (if stored at all) is the embedding again
        tensors = SafetensorsState(hf_dir, params_dtype, skip=("lm_head.weight",) if tied else ())
        unused = M.uncovered_keys(list(tensors), mapping, transforms)
        if unused:
            raise ConfigError(f"{hf_dir}: unexpected tensor(s) with no place in the PRM: {unused[:8]}")
        print(f"[3/4] mapping {len(tensors)} tensors from {hf_dir} (read one at a time)", flush=True)
        try:
            apply_transforms(_ModelState(tensors), target, mapping=mapping, transforms=transforms)
        except ValueError as e:  # NeMo's shape check names the parameter
            raise ConfigError(f"{hf_dir}: {e}") from None
        missing = [n for n, p in module.named_parameters() if p.is_meta and not n.startswith("step_head.")]
        if missing:
            raise ConfigError(f"{hf_dir}: no source tensor for {missing[:8]}")
        if head == "scalar":  # a fresh head, with the documented init (see model/heads.py)
            from nemo_erprm.model.heads import ScalarHead

            module.step_head = ScalarHead(module.config)
        print(f"[4/4] writing {out}", flush=True)
        save_prm_checkpoint(target, trainer, out)

        meta = {
            "format_version": 1,
            "head": head,
            "family": type(cfg).__name__,
            "source": str(source),
            "architecture": (getattr(hf_cfg, "architectures", None) or [None])[0],
            **tokens,
            "recommended_aggregation": "min",
            "suggested_layout": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp},
        }
        (out / PRM_CONFIG_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    print(f"PRM checkpoint written to {out} (head={head}, step tag {step_tag!r} = id {tokens['step_tag_id']})")
    return out
