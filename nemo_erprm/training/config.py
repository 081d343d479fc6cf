"""`TrainConfig`: the training stage's YAML (``conf/erprm_*.yaml``, ``conf/tiny_cpu.yaml``).

Schema defaults <- YAML file <- ``key=value`` overrides (OmegaConf dotlist), type-checked.
Sections: ``run`` (name, folder, seed), ``model`` (:class:`ModelConfig` plus where the
weights and tokenizer come from), ``data``, ``optim``, ``trainer``, ``logging``, ``export``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Sequence

from omegaconf import OmegaConf

from nemo_erprm.data.layout import PAD_TO, check_seq_length
from nemo_erprm.errors import ConfigError
from nemo_erprm.jsonl import check_utf8
from nemo_erprm.yaml_config import Range, check_numbers, load_structured
from nemo_erprm.nemo.model_config import ModelConfig


@dataclass
class RunConfig:
    name: str = "erprm"
    output_dir: str = "outputs/train"  # the run folder is output_dir/name
    seed: int = 1234


@dataclass
class TrainModelConfig(ModelConfig):
    # Initial weights: a PRM checkpoint (tools/convert_hf_checkpoint.py, or a trained run's
    # checkpoint). Its shape, head, step tag and tokenizer are used; the layout, precision,
    # FP8 and recompute settings come from this section. null: random init from the shape
    # fields and `tokenizer` (tests, tiny runs).
    init_from: Optional[str] = None
    tokenizer: Optional[str] = None  # HF tokenizer dir, a .gguf file or "smollm2" (random init only)
    add_step_tag_token: bool = False  # random init only: add `step_tag` as a special token


@dataclass
class DataConfig:
    train: str = "???"  # labeled records (tools/label_rollouts.py), text_value or trl JSONL
    validation: Optional[str] = None  # held-out file; else `val_fraction` of the train problems
    val_fraction: float = 0.05  # held out by problem id (all trajectories of a problem together)
    format: str = "auto"  # auto | canonical | text_value | trl
    eta: float = 2.0  # which ER label of canonical records (2: Mistral data, 10: DeepSeek data)
    packing: bool = True
    # Width of a micro-batch: `longest` pads to its longest row (rounded up to what the layout
    # needs), `max_length` to model.seq_length. Same loss and gradients; pipeline parallelism
    # always runs at max_length (its stages exchange activations of one fixed shape).
    pad_to: str = "longest"
    micro_batch_size: int = 1
    global_batch_size: int = 64
    num_workers: int = 0
    num_proc: Optional[int] = None  # tokenization workers
    shuffle: bool = True

    NUMBER_RANGES: ClassVar[dict[str, Range]] = {
        "val_fraction": Range(0, 1, high_open=True), "micro_batch_size": Range(1), "global_batch_size": Range(1),
        "num_workers": Range(0), "num_proc": Range(1, note="null: one process"),
    }  # eta: any number, .inf / -.inf included


@dataclass
class OptimConfig:
    lr: float = 1.0e-6  # paper; sweep {5e-6, 2e-6, 1e-6, 5e-7}
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    warmup_ratio: float = 0.03  # of max steps, linear warmup, then cosine to min_lr
    distributed_optimizer: Optional[bool] = None  # null: on with GPUs, off on the CPU backend
    # Overlap the gradient reduce-scatter with the backward pass and the parameter all-gather
    # with the next forward (megatron DDP). null: on with GPUs (the gather only with the
    # distributed optimizer), off on the CPU backend; both run on CPU when set.
    overlap_grad_reduce: Optional[bool] = None
    overlap_param_gather: Optional[bool] = None
    # Distributed-optimizer checkpoints in megatron's fully reshardable format, so a run may
    # resume at another TP/PP/DP layout; false: the faster dp_reshardable format, which can
    # only change the data-parallel size between restarts.
    reshardable_checkpoints: bool = True
    # Elements per DDP gradient/parameter bucket (megatron's bucket_size); null: megatron's
    # default (40M, or 1M x DP). Each bucket is one overlapped reduce-scatter / all-gather.
    ddp_bucket_size: Optional[int] = None

    NUMBER_RANGES: ClassVar[dict[str, Range]] = {  # min_lr <= lr: TrainConfig.validate
        "lr": Range(0, low_open=True), "min_lr": Range(0), "weight_decay": Range(0),
        "adam_beta1": Range(0, 1, high_open=True), "adam_beta2": Range(0, 1, high_open=True),
        "clip_grad": Range(0, note="0: no clipping"), "warmup_ratio": Range(0, 1, high_open=True),
        "ddp_bucket_size": Range(1, note="null: megatron's default"),
    }


@dataclass
class TrainerConfig:
    max_epochs: float = 1.0  # the paper's single epoch; max_steps wins when set
    max_steps: Optional[int] = None
    val_check_interval: int = 50  # validate every k optimizer steps (and at the end)
    limit_val_batches: Optional[int] = None  # null: the whole held-out split
    checkpoint_every_n_steps: int = 100
    keep_checkpoints: int = 2  # most recent kept (plus `last`)
    devices: Optional[int] = None  # per node; null: tp*pp (CPU) or every visible GPU
    num_nodes: int = 1
    log_every_n_steps: int = 1
    stop_after_steps: Optional[int] = None  # end this invocation after k steps, with a checkpoint
    validate_only: bool = False  # evaluate `model.init_from` on the held-out split, no training

    NUMBER_RANGES: ClassVar[dict[str, Range]] = {
        "max_epochs": Range(0, low_open=True), "max_steps": Range(1, note="null: trainer.max_epochs sets the length"),
        "val_check_interval": Range(1), "limit_val_batches": Range(0, note="null: the whole held-out split"),
        "checkpoint_every_n_steps": Range(1), "keep_checkpoints": Range(-1, note="-1: all"),
        "devices": Range(1, note="null: tp*pp on CPU, every visible GPU"), "num_nodes": Range(1),
        "log_every_n_steps": Range(1), "stop_after_steps": Range(1, note="null: run to the end"),
    }


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb_project: Optional[str] = None  # W&B when set (needs wandb installed and logged in)
    sample_ids: bool = False  # write the sample ids of every step to samples.jsonl (resume checks)


@dataclass
class ExportConfig:
    hf: bool = False  # export the final checkpoint to HF (run_dir/hf) after training


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def validate(self) -> "TrainConfig":
        check_numbers(self)  # load_structured checked a loaded config; this one may be built in code
        if self.model.init_from is None and self.model.tokenizer is None:
            raise ConfigError("model: set init_from (a PRM checkpoint) or tokenizer (random init)")
        if self.model.init_from is not None and not Path(self.model.init_from).is_dir():
            raise ConfigError(f"model.init_from: {self.model.init_from} is not a directory")
        if not Path(self.data.train).exists():
            raise ConfigError(f"data.train: {self.data.train} does not exist")
        if self.data.validation is not None and not Path(self.data.validation).exists():
            raise ConfigError(f"data.validation: {self.data.validation} does not exist")
        for key in ("train", "validation"):  # read before the run folder is written; datasets reads them later
            if getattr(self.data, key) is not None:
                check_utf8(getattr(self.data, key))
        d = self.data  # ranges of single numbers: NUMBER_RANGES, checked by load_structured
        if d.global_batch_size % d.micro_batch_size:
            raise ConfigError(f"data.global_batch_size={d.global_batch_size} must be a multiple of "
                              f"data.micro_batch_size={d.micro_batch_size}")
        if d.pad_to not in PAD_TO:
            raise ConfigError(f"data.pad_to={d.pad_to!r}: must be one of {', '.join(PAD_TO)}")
        if self.optim.min_lr > self.optim.lr:
            raise ConfigError(f"optim.min_lr={self.optim.min_lr}: must be <= optim.lr={self.optim.lr} (the cosine "
                              "decays from lr to min_lr)")
        m = self.model
        if m.seq_length:  # the layout's width multiple (SP over TP, FP8 row blocks): refused here, not at step 1
            check_seq_length(m.seq_length, m.tensor_model_parallel_size, m.sequence_parallel, fp8=m.fp8,
                             fp8_recipe=m.fp8_recipe, micro_batch_size=d.micro_batch_size)
        if self.optim.overlap_param_gather and self.optim.distributed_optimizer is False:
            raise ConfigError("optim.overlap_param_gather needs optim.distributed_optimizer=true")
        self.model.validate()  # after the checks above: it imports NeMo (~15 s)
        if self.trainer.validate_only and self.model.init_from is None:
            raise ConfigError("trainer.validate_only needs model.init_from (the checkpoint to evaluate)")
        self._validate_packed_attention()
        return self

    def _validate_packed_attention(self) -> None:
        """TE spec + packing goes through THD attention (see ModelConfig.uses_thd, which refuses
        turning it off); THD lays a micro-batch out as one row [1, b*s], and pipeline stages
        exchange activations shaped [s, b, h], so with pipeline parallelism it takes one row."""
        m, d = self.model, self.data
        if m.uses_thd(d.packing) and m.pipeline_model_parallel_size > 1 and d.micro_batch_size > 1:
            raise ConfigError(
                f"data.micro_batch_size={d.micro_batch_size} with THD attention (model.transformer_impl="
                f"transformer_engine, data.packing=true) and model.pipeline_model_parallel_size="
                f"{m.pipeline_model_parallel_size}: THD lays a micro-batch out as one row, which pipeline stages "
                f"would exchange in the wrong shape; set data.micro_batch_size=1 (packed rows are long already)"
            )


def load_train_config(path: Optional[str] = None, overrides: Sequence[str] = (), validate: bool = True) -> TrainConfig:
    cfg = load_structured(TrainConfig, path, overrides)
    return cfg.validate() if validate else cfg


def dump_train_config(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
