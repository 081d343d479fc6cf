"""`ModelConfig`: the `model:` section of a training YAML -> NeMo PRM config + precision plugin.

    model:
      family: llama            # gpt | llama | deepseek | llama3 | mistral | qwen2
      num_layers: 30           # backbone shape; unset fields keep the family's defaults
      hidden_size: 576
      ...
      head: lm_tokens          # lm_tokens (paper) | scalar
      step_tag: "ки"
      tensor_model_parallel_size: 1
      pipeline_model_parallel_size: 1
      virtual_pipeline_model_parallel_size: null
      precision: bf16          # bf16 | fp16 | fp32
      transformer_impl: local  # local | transformer_engine
      fp8: null                # null | hybrid | e4m3   (transformer_engine only)
      fp8_recipe: delayed      # delayed | tensorwise | mxfp8 (Blackwell only) | blockwise
      recompute: none          # none | selective | full
      packed_attention: null   # null: THD (cu_seqlens) exactly when TE spec + data.packing

FP8 and Transformer Engine form one switch: ``fp8`` is accepted only with
``transformer_impl: transformer_engine`` (megatron's local spec would silently ignore it),
and the TE spec only where Transformer Engine is installed.

Packed rows (``data.packing``) need attention that keeps the samples of a row apart. The local
spec applies the block-diagonal ``attention_mask``; Transformer Engine's causal attention
ignores ``attention_mask``, so under the TE spec packed rows go through THD attention
(``cu_seqlens``, :mod:`nemo_erprm.model.thd`). ``packed_attention`` picks it: ``null`` (the
default) turns THD on exactly for TE + packing; ``true`` asks for it (TE spec only); ``false``
with TE + packing is refused (samples would attend to each other).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

from nemo_erprm.errors import ConfigError
from nemo_erprm.model.settings import FP8_FORMATS, HEAD_TYPES, RECOMPUTE
from nemo_erprm.yaml_config import Range

# model.precision -> (Lightning's precision plugin name, torch dtype name); torch is imported
# where the dtype is needed (precision_dtype), so configs load without it
PRECISIONS = {"bf16": ("bf16-mixed", "bfloat16"), "fp16": ("16-mixed", "float16"), "fp32": ("32", "float32")}


def precision_dtype(precision: str) -> Any:
    """The torch dtype of ``model.precision`` (bf16, fp16, fp32)."""
    import torch

    return getattr(torch, PRECISIONS[precision][1])
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
_SHAPE_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size",
    "seq_length", "rotary_base", "layernorm_epsilon", "share_embeddings_and_output_weights", "kv_channels",
)


@dataclass
class ModelConfig:
    family: str = "llama"
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_query_groups: Optional[int] = None
    kv_channels: Optional[int] = None
    vocab_size: Optional[int] = None
    seq_length: Optional[int] = None
    rotary_base: Optional[int] = None
    layernorm_epsilon: Optional[float] = None
    share_embeddings_and_output_weights: Optional[bool] = None
    head: str = "lm_tokens"
    step_tag: str = "ки"
    plus_token: str = "+"
    minus_token: str = "-"
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    sequence_parallel: bool = False
    precision: str = "bf16"
    transformer_impl: str = "local"
    fp8: Optional[str] = None
    fp8_recipe: str = "delayed"
    recompute: str = "none"
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    packed_attention: Optional[bool] = None  # THD attention (cu_seqlens); null: on for TE spec + packing

    # checked by yaml_config.load_structured with every other number of the config
    NUMBER_RANGES: ClassVar[dict[str, Range]] = {
        **{k: Range(1, note="null: the family's or checkpoint's") for k in (
            "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
            "vocab_size", "seq_length")},
        "rotary_base": Range(0, low_open=True), "layernorm_epsilon": Range(0, low_open=True),
        "tensor_model_parallel_size": Range(1), "pipeline_model_parallel_size": Range(1),
        "virtual_pipeline_model_parallel_size": Range(1, note="null: off"),
        "hidden_dropout": Range(0, 1, high_open=True), "attention_dropout": Range(0, 1, high_open=True),
    }

    def validate(self) -> "ModelConfig":
        from nemo_erprm.nemo.config import FAMILIES

        if self.family not in FAMILIES:
            raise ConfigError(f"model.family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        if self.head not in HEAD_TYPES:
            raise ConfigError(f"model.head must be one of {HEAD_TYPES}, got {self.head!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"model.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.fp8 not in FP8_FORMATS:
            raise ConfigError(f"model.fp8 must be one of {FP8_FORMATS}, got {self.fp8!r}")
        if self.fp8_recipe not in FP8_RECIPES:
            raise ConfigError(f"model.fp8_recipe must be one of {FP8_RECIPES}, got {self.fp8_recipe!r}")
        if self.recompute not in RECOMPUTE:
            raise ConfigError(f"model.recompute must be one of {sorted(RECOMPUTE)}, got {self.recompute!r}")
        if self.virtual_pipeline_model_parallel_size and self.pipeline_model_parallel_size < 2:
            raise ConfigError("model.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size >= 2")
        if self.sequence_parallel and self.tensor_model_parallel_size < 2:
            raise ConfigError("model.sequence_parallel needs tensor_model_parallel_size >= 2")
        try:
            from nemo_erprm.model.build import check_precision_switch

            check_precision_switch(self.transformer_impl, self.fp8)
        except ConfigError as e:
            raise ConfigError(f"model: {e}") from None
        if self.packed_attention and self.transformer_impl != "transformer_engine":
            raise ConfigError(
                "model.packed_attention=true (THD attention) needs model.transformer_impl=transformer_engine: "
                "the local spec's attention takes the block-diagonal mask instead (set packed_attention: null)"
            )
        check_fp8_recipe_on_this_gpu(self.fp8, self.fp8_recipe)
        return self

    def uses_thd(self, packing: bool) -> bool:
        """Whether packed rows go through THD attention (see the module doc); refuses the
        combination where samples of a row would attend to each other."""
        te = self.transformer_impl == "transformer_engine"
        if self.packed_attention is None:
            return te and packing
        if te and packing and not self.packed_attention:
            raise ConfigError(
                "model.packed_attention=false with model.transformer_impl=transformer_engine and data.packing=true: "
                "Transformer Engine's causal attention ignores the block-diagonal mask, so packed samples would "
                "attend to each other; set model.packed_attention: null (THD) or data.packing: false"
            )
        return bool(self.packed_attention)


def gpu_compute_capability() -> Optional[tuple[int, int]]:
    """(major, minor) of the current CUDA device; None without CUDA (nothing to check)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


def check_fp8_recipe_on_this_gpu(fp8: Optional[str], fp8_recipe: str) -> None:
    """MXFP8 needs Blackwell (compute capability >= 10.0; Transformer Engine's
    ``check_mxfp8_support``): on a Hopper it would fail at the first FP8 GEMM, after the job
    waited in the queue and loaded the model. Checked where a GPU is visible."""
    if not fp8 or fp8_recipe != "mxfp8":
        return
    cap = gpu_compute_capability()
    if cap is not None and cap < (10, 0):
        raise ConfigError(
            f"model.fp8_recipe=mxfp8 needs a Blackwell GPU (compute capability >= 10.0); this GPU is "
            f"sm_{cap[0]}{cap[1]}: use model.fp8_recipe=delayed or tensorwise"
        )


def label_token_ids(tokenizer: Any, cfg: ModelConfig) -> tuple[Optional[int], Optional[int]]:
    """Single token ids of the ``+``/``-`` label tokens (lm_tokens head), else a clear error."""
    if cfg.head != "lm_tokens":
        return None, None
    from nemo_erprm.data.tokenize import single_token_id

    hf = getattr(tokenizer, "tokenizer", tokenizer)
    ids = []
    for name, text in (("plus_token", cfg.plus_token), ("minus_token", cfg.minus_token)):
        tid = single_token_id(hf, text)
        if tid is None:
            raise ConfigError(f"model.{name}={text!r} is not a single token of this tokenizer")
        ids.append(tid)
    return ids[0], ids[1]


def build_erprm_config(cfg: ModelConfig, tokenizer: Any = None, **extra: Any):
    """The NeMo PRM config object (family class + shape + PRM fields + parallelism)."""
    from nemo_erprm.nemo.config import FAMILIES

    cfg.validate()
    plus, minus = label_token_ids(tokenizer, cfg) if tokenizer is not None else (None, None)
    dtype = precision_dtype(cfg.precision)
    kwargs: dict[str, Any] = {f: getattr(cfg, f) for f in _SHAPE_FIELDS if getattr(cfg, f) is not None}
    kwargs.update(
        head=cfg.head,
        step_tag=cfg.step_tag,
        plus_token_id=plus,
        minus_token_id=minus,
        transformer_impl=cfg.transformer_impl,
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=cfg.virtual_pipeline_model_parallel_size,
        sequence_parallel=cfg.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        fp8=cfg.fp8,
        fp8_recipe=cfg.fp8_recipe,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        packed_attention=bool(cfg.packed_attention),  # train.py resolves null with data.packing
        **RECOMPUTE[cfg.recompute],
    )
    kwargs.update(extra)
    family_cls = FAMILIES[cfg.family]
    known = {f.name for f in fields(family_cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"model: {family_cls.__name__} has no field(s) {unknown}")
    try:
        return family_cls(**kwargs)
    except (ValueError, AssertionError) as e:  # megatron's own shape/parallelism checks
        raise ConfigError(f"model: {e}") from None


def build_precision_plugin(cfg: ModelConfig):
    """NeMo's MegatronMixedPrecision for this config (FP8 args only with the TE spec)."""
    import nemo.lightning as nl

    cfg.validate()
    precision, dtype = PRECISIONS[cfg.precision][0], precision_dtype(cfg.precision)
    fp8 = {"fp8": cfg.fp8, "fp8_recipe": cfg.fp8_recipe} if cfg.fp8 else {}
    return nl.MegatronMixedPrecision(precision=precision, params_dtype=dtype, pipeline_dtype=dtype, **fp8)


def set_config_fields(config: Any, **values: Any) -> Any:
    """Set fields of a NeMo config *and* of its io record (``config.__io__``, the arguments
    NeMo saves as the checkpoint's ``context/``). A plain ``setattr`` after construction is
    not saved: a checkpoint would reload with the old value (NeMo's precision plugin updates
    both the same way)."""
    io = getattr(config, "__io__", None)
    for name, value in values.items():
        setattr(config, name, value)
        if io is not None:
            setattr(io, name, value)
    return config
