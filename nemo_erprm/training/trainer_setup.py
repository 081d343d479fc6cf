"""NeMo's side of a run: the megatron strategy (parallel layout, DDP, checkpoint I/O), the
Lightning trainer with our callbacks, the logger (TensorBoard, W&B, checkpoints) and resume."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nemo_erprm.training.signals import STOP_SIGNALS

if TYPE_CHECKING:
    from nemo_erprm.training.config import TrainConfig
    from nemo_erprm.training.data_setup import Schedule


def build_strategy(cfg: TrainConfig, ddp: Any) -> Any:
    """``MegatronStrategy``: TP/PP/VPP/SP from the config, checkpoints written synchronously."""
    import nemo.lightning as nl

    m = cfg.model
    dist_opt = ddp.use_distributed_optimizer
    return nl.MegatronStrategy(
        tensor_model_parallel_size=m.tensor_model_parallel_size,
        pipeline_model_parallel_size=m.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=m.virtual_pipeline_model_parallel_size,
        sequence_parallel=m.sequence_parallel,
        ddp=ddp,
        ckpt_optim_fully_reshardable=dist_opt and cfg.optim.reshardable_checkpoints,
        ckpt_load_strictness="log_all",  # an lm_tokens PRM has no head weights to load
        ckpt_async_save=False,  # a preempted job must not exit before its checkpoint is written
        replace_progress_bar=False,  # NeMo's replacement deadlocks multi-rank CPU runs
    )


def build_callbacks(cfg: TrainConfig) -> list[Any]:
    from nemo_erprm.nemo.callbacks import StepMetricsLogger, StopOnSignal
    from nemo_erprm.training.callbacks import (FinalCheckpoint, StopAfterSteps, TrainingMetrics,
                                               ValidateAtIntervalAndEnd)

    t = cfg.trainer
    callbacks = [
        StepMetricsLogger(),
        TrainingMetrics(str(cfg.run_dir), t.log_every_n_steps, cfg.logging.sample_ids, cfg.data.global_batch_size),
        *(StopOnSignal(sig) for sig in STOP_SIGNALS),  # USR1, TERM: exit 0 and resume; INT: exit 130
        FinalCheckpoint(),
        ValidateAtIntervalAndEnd(),
    ]
    if t.stop_after_steps:
        callbacks.append(StopAfterSteps(t.stop_after_steps))
    return callbacks


def build_trainer(cfg: TrainConfig, strategy: Any, schedule: Schedule, has_validation: bool, on_gpu: bool,
                  nodes: int, devices: int) -> Any:
    """NeMo's ``Trainer``: precision plugin, Slurm environment, callbacks, validation every
    ``trainer.val_check_interval`` optimizer steps (none without a held-out split)."""
    import nemo.lightning as nl

    from nemo_erprm.nemo.model_config import build_precision_plugin
    from nemo_erprm.training.signals import shield_spawned_helpers

    t = cfg.trainer
    plugins: list = [build_precision_plugin(cfg.model)]
    if "SLURM_JOB_ID" in os.environ:  # our preemption path checkpoints; slurm/train_erprm.sh requeues
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    shield_spawned_helpers()  # Slurm signals every process of the step; helpers must outlive the save
    max_steps = max(schedule.max_steps, 1)
    return nl.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=devices,
        num_nodes=nodes,
        max_steps=max_steps,
        val_check_interval=min(t.val_check_interval, max_steps),
        check_val_every_n_epoch=None,  # validate every k optimizer steps, across epochs
        # no held-out split (data.val_fraction=0, no data.validation): no validation loop at all
        limit_val_batches=0 if not has_validation else (
            t.limit_val_batches if t.limit_val_batches is not None else 1.0),
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        use_distributed_sampler=False,
        enable_progress_bar=False,  # one line per step from TrainingMetrics instead
        logger=False,  # build_logger's NeMoLogger adds ours; Lightning's default would write ./lightning_logs
        strategy=strategy,
        plugins=plugins,
        callbacks=build_callbacks(cfg),
    )


def build_logger(cfg: TrainConfig) -> Any:
    """``NeMoLogger``: checkpoints in ``checkpoints/``, TensorBoard in ``tb/`` (events of every
    restart in the one folder), W&B files in the run folder, NeMo's logs in
    ``logs/`` (on resume NeMo moves the files of its log folder into ``run_N/``, and
    ``metrics.jsonl`` must stay where it is)."""
    import nemo.lightning as nl
    from lightning.pytorch.loggers import TensorBoardLogger

    t, run_dir = cfg.trainer, cfg.run_dir
    checkpoint = nl.ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"), filename="{step}", monitor="step", mode="max",
        save_top_k=t.keep_checkpoints, save_last=True, every_n_train_steps=t.checkpoint_every_n_steps,
        always_save_context=True, save_optim_on_train_end=True, save_on_train_epoch_end=False,
    )
    wandb = None
    if cfg.logging.wandb_project:
        from lightning.pytorch.loggers import WandbLogger

        wandb = WandbLogger(project=cfg.logging.wandb_project, name=cfg.run.name, save_dir=str(run_dir))
    # update_logger_directory=False: NeMo would re-root the loggers under its log folder joined
    # with their relative save_dir (an absolute run.output_dir gave <run>/<output_dir>/<name>/tb)
    tensorboard = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="") if cfg.logging.tensorboard else None
    return nl.NeMoLogger(explicit_log_dir=str(run_dir / "logs"), ckpt=checkpoint, wandb=wandb,
                         tensorboard=tensorboard, update_logger_directory=False)


def build_resume(cfg: TrainConfig) -> Any:
    """``AutoResume`` from the run folder's newest checkpoint; else the initial weights of
    ``model.init_from`` (model state only)."""
    import nemo.lightning as nl

    restore = None
    if cfg.model.init_from is not None:
        restore = nl.RestoreConfig(path=cfg.model.init_from, load_model_state=True, load_optim_state=False,
                                   load_artifacts=False)
    return nl.AutoResume(resume_if_exists=not cfg.trainer.validate_only, resume_ignore_no_checkpoint=True,
                         resume_from_directory=str(cfg.run_dir / "checkpoints"), restore_config=restore)
