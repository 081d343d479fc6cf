"""Train an ER-PRM: ``python -m nemo_erprm.train --config conf/<recipe>.yaml [key=value ...]``.

The whole run, in order (NeMo 2 does the heavy lifting):
1. config (:class:`nemo_erprm.training.config.TrainConfig`) and the run folder;
2. tokenizer and PRM config: from the initial checkpoint (``model.init_from``, written by
   ``tools/convert_hf_checkpoint.py`` or by an earlier run) with this run's layout and
   precision, or random weights of the configured shape (``model.tokenizer``);
3. ``ERPRMModel`` with Adam, linear warmup then cosine decay (NeMo's scheduler);
4. ``ERPRMDataModule``: labeled records, held-out split, packing, megatron sampling;
5. NeMo's ``Trainer`` with ``MegatronStrategy`` (TP/PP/VPP/DP, distributed optimizer on
   GPUs), ``MegatronMixedPrecision`` (bf16; FP8 with the TE spec), checkpoints, preemption;
6. ``NeMoLogger`` (TensorBoard, optional W&B) and ``AutoResume``, then ``llm.train``;
7. optionally the final checkpoint exported to HF.

Run folder (``run.output_dir/run.name``): ``config.yaml`` (the resolved config),
``metrics.jsonl`` (see :mod:`nemo_erprm.training.callbacks`), ``checkpoints/`` (NeMo
checkpoints: ``weights/`` + ``context/``; ``*-last`` is the newest), ``tb/`` (TensorBoard),
``data_summary.json`` (samples, steps, rows per split; steps per epoch), ``logs/`` (NeMo's
logs), ``tokenizer/`` (random init), ``hf/`` (``export.hf``).

Resume and preemption: rerunning the same command continues from the newest checkpoint of
the run folder (model, optimizer, LR schedule, consumed samples), so the loss trajectory is
the one of an uninterrupted run. SIGUSR1 or SIGTERM (Slurm's warning before the time limit,
pre-emption) ends the current step, writes a checkpoint and exits with status 0; requeueing
is the launcher's job (``slurm/train_erprm.sh``). The initial checkpoint is read only when
the run folder has no checkpoint yet.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from nemo_erprm.errors import ConfigError
from nemo_erprm.training.checkpoints import last_checkpoint

if TYPE_CHECKING:  # the config module imports torch and megatron: not needed for --help
    from nemo_erprm.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
# torchrun's and Slurm's per-process variables (a helper process must not inherit them)
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")
# Settings a resumed run must share with the run it resumes (layout, precision, optimizer
# and trainer settings may change between restarts).
RESUME_IDENTITY = ("data", "model.init_from", "model.head", "model.step_tag", "model.tokenizer", "run.seed")
# ... except these data keys, which change the speed, not what is trained (nor its order)
RESUME_FREE_DATA_KEYS = ("pad_to",)


def single_process_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment for a helper process of its own (the HF export): without torchrun's and
    Slurm's rank variables, which would make it try to join this job's process group."""
    return {k: v for k, v in environ.items() if k not in LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}


def global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def prepare_run_dir(cfg: TrainConfig) -> None:
    """Write config.yaml; refuse to continue a run folder written with other data or weights."""
    from omegaconf import OmegaConf

    from nemo_erprm.training.config import dump_train_config

    run_dir = cfg.run_dir
    saved = run_dir / "config.yaml"
    if saved.exists() and any((run_dir / "checkpoints").glob("*")):
        old, new = OmegaConf.load(saved), OmegaConf.create(dump_train_config(cfg))
        for key in RESUME_IDENTITY:
            a, b = OmegaConf.select(old, key), OmegaConf.select(new, key)
            if key == "data":  # a run folder written before a free key existed still resumes
                a, b = ({k: v for k, v in OmegaConf.to_container(x).items() if k not in RESUME_FREE_DATA_KEYS}
                        for x in (a, b))
            if a != b:
                raise ConfigError(f"{run_dir} holds a run with {key}={a!r}, this config has {b!r}: "
                                  f"set run.name to start a new run")
    if global_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(dump_train_config(cfg))
        os.replace(tmp, saved)


def tokenizer_for_random_init(cfg: TrainConfig):
    """NeMo tokenizer from ``model.tokenizer`` (with the step tag added when asked), saved in
    the run folder so the checkpoints' context carries exactly this tokenizer."""
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer as NeMoTokenizer

    target = cfg.run_dir / "tokenizer"
    if not (target / "tokenizer_config.json").exists():
        from nemo_erprm.data.tokenize import add_step_tag_token
        from nemo_erprm.embedded import load_tokenizer

        hf = load_tokenizer(cfg.model.tokenizer)
        if cfg.model.add_step_tag_token:
            add_step_tag_token(hf, cfg.model.step_tag)
        tmp = cfg.run_dir / f"tokenizer.tmp{global_rank()}"
        hf.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic; another rank may have won the race
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return NeMoTokenizer(str(target))


def build_prm_config(cfg: TrainConfig, tokenizer: Any):
    """The NeMo PRM config: the checkpoint's (shape, head, tokens) with this run's layout,
    precision and recompute settings, or a fresh one from the `model` section.

    Every setting is written through :func:`set_config_fields`, so the checkpoints of this run
    record it in their io context (a plain setattr is not saved: a run's FP8/TE settings would
    be lost and the checkpoint reloaded with the init checkpoint's). Packed rows under the TE
    spec use THD attention (``model.packed_attention``); packed rows under the local spec need
    per-row RoPE positions, which fused RoPE cannot take: fusion is turned off, and said so."""
    from nemo_erprm.nemo.model_config import PRECISIONS, build_erprm_config, set_config_fields

    m = cfg.model
    thd = m.uses_thd(cfg.data.packing)
    if m.init_from is None:
        prm = build_erprm_config(m, tokenizer, packed_attention=thd)
    else:
        from nemo_erprm.convert.load import load_prm_config
        from nemo_erprm.model.build import RECOMPUTE

        prm, _ = load_prm_config(m.init_from)
        if m.step_tag != prm.step_tag or m.head != prm.head:
            raise ConfigError(f"model.init_from {m.init_from} has head={prm.head!r}, step tag {prm.step_tag!r}; "
                              f"the config says head={m.head!r}, step_tag={m.step_tag!r}")
        _, dtype = PRECISIONS[m.precision]
        recompute_off = dict(recompute_granularity=None, recompute_method=None, recompute_num_layers=None)
        layout = dict(
            tensor_model_parallel_size=m.tensor_model_parallel_size,
            pipeline_model_parallel_size=m.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=m.virtual_pipeline_model_parallel_size,
            sequence_parallel=m.sequence_parallel, transformer_impl=m.transformer_impl, fp8=m.fp8,
            fp8_recipe=m.fp8_recipe, params_dtype=dtype, pipeline_dtype=dtype, bf16=m.precision == "bf16",
            fp16=m.precision == "fp16", hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
            packed_attention=thd, **{**recompute_off, **RECOMPUTE[m.recompute]},
        )
        if m.seq_length:
            layout["seq_length"] = m.seq_length
        set_config_fields(prm, **layout, init_model_with_meta_device=False, perform_initialization=True)
    if cfg.data.packing and not thd and getattr(prm, "apply_rope_fusion", False):
        set_config_fields(prm, apply_rope_fusion=False)
        if global_rank() == 0:
            print("note: RoPE fusion is off for this run: data.packing=true with model.transformer_impl=local gives "
                  "rows of several samples, whose per-row RoPE positions Transformer Engine's fused RoPE cannot "
                  "take (model.transformer_impl=transformer_engine packs through THD attention instead)", flush=True)
    return prm


def devices_per_node(cfg: TrainConfig, on_gpu: bool) -> int:
    if cfg.trainer.devices:
        return cfg.trainer.devices
    for var in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if on_gpu:
        import torch

        return torch.cuda.device_count()
    return cfg.model.tensor_model_parallel_size * cfg.model.pipeline_model_parallel_size


def num_nodes(cfg: TrainConfig) -> int:
    """Nodes of this job: Slurm's count under Slurm (Lightning's SLURM environment refuses a
    ``num_nodes`` that differs from ``SLURM_NNODES``), else ``trainer.num_nodes``."""
    nnodes = os.environ.get("SLURM_NNODES", "")
    if "SLURM_JOB_ID" in os.environ and nnodes.isdigit():
        if cfg.trainer.num_nodes not in (1, int(nnodes)):
            raise ConfigError(f"trainer.num_nodes={cfg.trainer.num_nodes} but the Slurm job has {nnodes} nodes")
        return int(nnodes)
    return cfg.trainer.num_nodes


def effective_pad_to(cfg: TrainConfig) -> str:
    """``data.pad_to`` as this run uses it (:func:`nemo_erprm.data.collate.effective_pad_to`)."""
    from nemo_erprm.data.collate import effective_pad_to as for_stages

    return for_stages(cfg.data.pad_to, cfg.model.pipeline_model_parallel_size)


def effective_settings(cfg: TrainConfig, prm_config: Any, ddp: Any, on_gpu: bool, nodes: int,
                       devices: int) -> dict[str, Any]:
    """What this run really uses, next to what the config asked for: ``changed`` lists every
    setting that differs from the request or from the model family's default, with the reason."""
    from dataclasses import fields

    from nemo_erprm.runtime.cpu_backend import TE_ONLY_FUSIONS

    m, o = cfg.model, cfg.optim
    effective = {
        "backend": "gpu (nccl)" if on_gpu else "cpu backend (gloo)",
        "nodes": nodes, "devices_per_node": devices,
        "tensor_model_parallel_size": prm_config.tensor_model_parallel_size,
        "pipeline_model_parallel_size": prm_config.pipeline_model_parallel_size,
        "virtual_pipeline_model_parallel_size": prm_config.virtual_pipeline_model_parallel_size,
        "sequence_parallel": prm_config.sequence_parallel,
        "transformer_impl": prm_config.transformer_impl,
        "precision": m.precision, "fp8": prm_config.fp8,
        "recompute_granularity": prm_config.recompute_granularity,
        "distributed_optimizer": ddp.use_distributed_optimizer,
        "overlap_grad_reduce": ddp.overlap_grad_reduce,
        "overlap_param_gather": ddp.overlap_param_gather,
        "fully_reshardable_checkpoints": ddp.use_distributed_optimizer and o.reshardable_checkpoints,
        "pad_to": effective_pad_to(cfg),
    }
    requested = {
        "tensor_model_parallel_size": m.tensor_model_parallel_size,
        "pipeline_model_parallel_size": m.pipeline_model_parallel_size,
        "virtual_pipeline_model_parallel_size": m.virtual_pipeline_model_parallel_size,
        "sequence_parallel": m.sequence_parallel, "transformer_impl": m.transformer_impl, "fp8": m.fp8,
        "distributed_optimizer": o.distributed_optimizer, "overlap_grad_reduce": o.overlap_grad_reduce,
        "overlap_param_gather": o.overlap_param_gather,
    }
    changed = {key: f"requested {want!r}, running {effective[key]!r}" for key, want in requested.items()
               if want is not None and want != effective[key]}
    if effective["pad_to"] != cfg.data.pad_to:
        changed["pad_to"] = (f"requested {cfg.data.pad_to!r}, running {effective['pad_to']!r}: pipeline stages "
                             f"exchange activations of one fixed length")
    defaults = {f.name: f.default for f in fields(type(prm_config)) if f.name in TE_ONLY_FUSIONS}
    for name, default in defaults.items():
        if default is True and not getattr(prm_config, name):
            changed[name] = "off (family default on): the fused kernel needs Transformer Engine"
    return {"effective": effective, "changed": changed}


def run(cfg: TrainConfig) -> Path:
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

        enable_cpu_backend()
    import nemo.lightning as nl
    from lightning.pytorch.loggers import TensorBoardLogger
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig
    from nemo.collections import llm
    from nemo.lightning.pytorch.callbacks import PreemptionCallback
    from nemo.lightning.pytorch.optim import CosineAnnealingScheduler

    from nemo_erprm.nemo.callbacks import StepMetricsLogger
    from nemo_erprm.data.collate import pad_multiple
    from nemo_erprm.nemo.data_module import ERPRMDataModule
    from nemo_erprm.nemo.model import ERPRMModel
    from nemo_erprm.nemo.model_config import PRECISIONS, build_precision_plugin
    from nemo_erprm.training.callbacks import FinalCheckpoint, StopAfterSteps, TrainingMetrics
    from nemo_erprm.training.signals import shield_spawned_helpers

    prepare_run_dir(cfg)
    run_dir = cfg.run_dir
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.trainer

    # 2. tokenizer + PRM config
    if m.init_from is not None:
        from nemo_erprm.convert.load import load_prm_config

        _, tokenizer = load_prm_config(m.init_from)
    else:
        tokenizer = tokenizer_for_random_init(cfg)
    prm_config = build_prm_config(cfg, tokenizer)
    seq_length = prm_config.seq_length

    # 4. data (built first: one epoch's length sets the schedule)
    data = ERPRMDataModule(
        d.train, tokenizer, val_path=d.validation, val_fraction=d.val_fraction, step_tag=prm_config.step_tag,
        data_format=d.format, eta=d.eta, seq_length=seq_length, micro_batch_size=d.micro_batch_size,
        global_batch_size=d.global_batch_size, packing=d.packing, pad_to=effective_pad_to(cfg),
        pad_multiple=pad_multiple(m.tensor_model_parallel_size, m.sequence_parallel),
        shuffle=d.shuffle, seed=cfg.run.seed,
        num_workers=d.num_workers, num_proc=d.num_proc, cache_dir=str(run_dir / "data_cache"),
    )
    steps_per_epoch = data.num_train_rows // d.global_batch_size
    max_steps = t.max_steps or math.floor(t.max_epochs * steps_per_epoch)
    if (steps_per_epoch < 1 or max_steps < 1) and not t.validate_only:
        raise ConfigError(f"data.train: {data.num_train_rows} rows ({'packed' if d.packing else 'one sample each'}) "
                          f"make no full global batch of {d.global_batch_size}; lower data.global_batch_size, "
                          f"turn data.packing off or add data")

    val_rows = data.counts.get("validation", {}).get("rows", 0)
    if data.has_validation and val_rows < d.global_batch_size and global_rank() == 0:
        print(f"warning: the held-out split has {val_rows} rows, fewer than a global batch of "
              f"{d.global_batch_size}: validation will not run (raise data.val_fraction)", flush=True)
    # With packing the global batch counts packed rows, not samples (the paper's "global batch
    # 64" is 64 samples): say how many samples a step really holds.
    train_counts = data.counts.get("train", {})
    samples_per_row = train_counts.get("kept", 0) / max(train_counts.get("rows", 0), 1)
    if global_rank() == 0:
        summary = {"splits": data.counts, "steps_per_epoch": steps_per_epoch, "max_steps": max_steps,
                   "global_batch_size": d.global_batch_size, "global_batch_unit": "rows",
                   "samples_per_row": round(samples_per_row, 3),
                   "samples_per_step": round(samples_per_row * d.global_batch_size, 1)}
        (run_dir / "data_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if d.packing:
            print(f"global batch: {d.global_batch_size} packed rows of {seq_length} tokens = "
                  f"~{samples_per_row * d.global_batch_size:.0f} samples per step "
                  f"({samples_per_row:.2f} samples per row)", flush=True)

    # 3. model + optimizer
    _, dtype = PRECISIONS[m.precision]
    dist_opt = on_gpu if o.distributed_optimizer is None else o.distributed_optimizer
    if dist_opt:
        from nemo_erprm.runtime.dist_optimizer import make_dist_optimizer_checkpointable

        make_dist_optimizer_checkpointable()  # see runtime/dist_optimizer.py
    optim = nl.MegatronOptimizerModule(
        config=OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, clip_grad=o.clip_grad, bf16=m.precision == "bf16",
            fp16=m.precision == "fp16", params_dtype=dtype, use_distributed_optimizer=dist_opt,
        ),
        lr_scheduler=CosineAnnealingScheduler(
            max_steps=max(max_steps, 1), warmup_steps=int(o.warmup_ratio * max_steps), constant_steps=0,
            min_lr=o.min_lr),
    )
    model = ERPRMModel(prm_config, optim=optim, tokenizer=tokenizer)
    ddp = DistributedDataParallelConfig(
        use_distributed_optimizer=dist_opt, grad_reduce_in_fp32=True, check_for_nan_in_grad=True,
        overlap_grad_reduce=on_gpu if o.overlap_grad_reduce is None else o.overlap_grad_reduce,
        overlap_param_gather=dist_opt and (on_gpu if o.overlap_param_gather is None else o.overlap_param_gather),
        bucket_size=o.ddp_bucket_size)

    # 5. trainer
    strategy = nl.MegatronStrategy(
        tensor_model_parallel_size=m.tensor_model_parallel_size,
        pipeline_model_parallel_size=m.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=m.virtual_pipeline_model_parallel_size,
        sequence_parallel=m.sequence_parallel,
        ddp=ddp,
        ckpt_optim_fully_reshardable=dist_opt and o.reshardable_checkpoints,
        ckpt_load_strictness="log_all",  # an lm_tokens PRM has no head weights to load
        ckpt_async_save=False,  # a preempted job must not exit before its checkpoint is written
        replace_progress_bar=False,  # NeMo's replacement deadlocks multi-rank CPU runs
    )
    nodes, devices = num_nodes(cfg), devices_per_node(cfg, on_gpu)
    settings = effective_settings(cfg, prm_config, ddp, on_gpu, nodes, devices)
    if global_rank() == 0:
        (run_dir / "effective_settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        by_reason: dict[str, list[str]] = {}
        for key, why in settings["changed"].items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():  # all of it in effective_settings.json
            print(f"note: {', '.join(keys)}: {why}", flush=True)
    plugins: list = [build_precision_plugin(m)]
    if "SLURM_JOB_ID" in os.environ:  # our preemption path checkpoints; slurm/train_erprm.sh requeues
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    shield_spawned_helpers()  # Slurm signals every process of the step; helpers must outlive the save
    callbacks = [
        StepMetricsLogger(),
        TrainingMetrics(str(run_dir), t.log_every_n_steps, cfg.logging.sample_ids, d.global_batch_size),
        PreemptionCallback(signal.SIGUSR1),
        PreemptionCallback(signal.SIGTERM),
        FinalCheckpoint(),
    ]
    if t.stop_after_steps:
        callbacks.append(StopAfterSteps(t.stop_after_steps))
    trainer = nl.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=devices,
        num_nodes=nodes,
        max_steps=max(max_steps, 1),
        val_check_interval=min(t.val_check_interval, max(max_steps, 1)),
        check_val_every_n_epoch=None,  # validate every k optimizer steps, across epochs
        # no held-out split (data.val_fraction=0, no data.validation): no validation loop at all
        limit_val_batches=0 if not data.has_validation else (
            t.limit_val_batches if t.limit_val_batches is not None else 1.0),
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        use_distributed_sampler=False,
        enable_progress_bar=False,  # one line per step from TrainingMetrics instead
        strategy=strategy,
        plugins=plugins,
        callbacks=callbacks,
    )

    # 6. logging, checkpoints, resume
    checkpoint = nl.ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"), filename="{step}", monitor="step", mode="max",
        save_top_k=t.keep_checkpoints, save_last=True, every_n_train_steps=t.checkpoint_every_n_steps,
        always_save_context=True, save_optim_on_train_end=True, save_on_train_epoch_end=False,
    )
    wandb = None
    if cfg.logging.wandb_project:
        from lightning.pytorch.loggers import WandbLogger

        wandb = WandbLogger(project=cfg.logging.wandb_project, name=cfg.run.name, save_dir=str(run_dir))
    # NeMo's logs go to logs/: on resume NeMo moves the files of its log folder into run_N/,
    # and metrics.jsonl must stay where it is
    log = nl.NeMoLogger(
        explicit_log_dir=str(run_dir / "logs"), ckpt=checkpoint, wandb=wandb,
        tensorboard=TensorBoardLogger(save_dir=str(run_dir), name="tb") if cfg.logging.tensorboard else None,
    )
    restore = None
    if m.init_from is not None:
        restore = nl.RestoreConfig(path=m.init_from, load_model_state=True, load_optim_state=False,
                                   load_artifacts=False)
    resume = nl.AutoResume(resume_if_exists=not t.validate_only, resume_ignore_no_checkpoint=True,
                           resume_from_directory=str(run_dir / "checkpoints"), restore_config=restore)

    if t.validate_only:
        log.setup(trainer, resume_if_exists=False)
        resume.setup(trainer, model)
        trainer.validate(model, datamodule=data)
        return run_dir
    print(f"training {max_steps} steps ({steps_per_epoch} per epoch, {data.num_train_rows} rows, global batch "
          f"{d.global_batch_size}) -> {run_dir}", flush=True)
    llm.train(model, data, trainer, log=log, resume=resume)

    # 7. export
    if cfg.export.hf and global_rank() == 0:
        final = last_checkpoint(run_dir)
        if final is None:
            raise ConfigError(f"{run_dir}/checkpoints: no final checkpoint to export")
        subprocess.run([sys.executable, str(REPO / "tools" / "export_hf_checkpoint.py"), "--ckpt", str(final),
                        "--out", str(run_dir / "hf"), "--overwrite"], check=True, env=single_process_env(os.environ))
    return run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    from nemo_erprm.errors import run_reporting_errors

    parser = argparse.ArgumentParser(prog="python -m nemo_erprm.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="recipe YAML (conf/erprm_*.yaml, conf/tiny_cpu.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value (OmegaConf dotlist), e.g. optim.lr=2e-6")
    parser.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs (ERPRM_VERBOSE=1)")
    args = parser.parse_args(argv)
    from nemo_erprm.runtime.logs import quiet_third_party, set_log_file

    quiet_third_party("train", args.verbose)  # library warnings to the run folder, not the console

    def go() -> int:
        # --print-config shows what a file resolves to, also where its paths do not exist yet
        from nemo_erprm.training.config import dump_train_config, load_train_config

        cfg = load_train_config(args.config, args.overrides, validate=not args.print_config)
        if args.print_config:
            print(dump_train_config(cfg), end="")
            return 0
        set_log_file(cfg.run_dir / f"library.rank{global_rank()}.log")  # not logs/: NeMo moves its files
        run_dir = run(cfg)
        if global_rank() == 0:
            print(f"run folder: {run_dir}", flush=True)
        return 0

    return run_reporting_errors(go)


if __name__ == "__main__":
    sys.exit(main())
