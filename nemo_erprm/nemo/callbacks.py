"""Lightning callback that logs the ER-PRM step metrics next to NeMo's reduced loss."""

from __future__ import annotations

import lightning.pytorch as L


class StepMetricsLogger(L.Callback):
    """Logs ``train_step_accuracy``, ``train_step_mae``, ``train_positive_label_fraction``
    after each optimizer step and the same ``val_*`` metrics over each validation run."""

    def __init__(self) -> None:
        self._val: dict[str, float] = {}
        self._val_steps = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = pl_module.training_loss_reduction.last_metrics
        if m:
            pl_module.log_dict(
                {f"train_{k}": m[k] for k in ("step_accuracy", "step_mae", "positive_label_fraction")},
                prog_bar=False, batch_size=1,
            )

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val, self._val_steps = {}, 0.0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        m = pl_module.validation_loss_reduction.last_metrics
        if not m:
            return
        n = m["num_steps"]
        for k in ("loss", "step_accuracy", "step_mae", "positive_label_fraction"):
            self._val[k] = self._val.get(k, 0.0) + m[k] * n
        self._val_steps += n

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._val_steps and not trainer.sanity_checking:
            pl_module.log_dict({f"val_{k}": v / self._val_steps for k, v in self._val.items()}, batch_size=1)
            self.last_validation = {k: v / self._val_steps for k, v in self._val.items()}
            self.last_validation["num_steps"] = self._val_steps


def _stop_on_signal_base():
    from nemo.lightning.pytorch.callbacks import PreemptionCallback

    return PreemptionCallback


class StopOnSignal(_stop_on_signal_base()):
    """NeMo's ``PreemptionCallback`` (the signal ends the current step, a checkpoint of it is
    written, the run stops), with the exit status a launcher expects: 0 for Slurm's SIGUSR1 /
    SIGTERM (the job is requeued and resumes), 130 for SIGINT (Ctrl-C: the run did not finish,
    so a ``train && next`` chain must not go on). Without it Ctrl-C ended a run through
    Lightning's KeyboardInterrupt path: exit 1, no checkpoint, no console line."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        import signal
        import sys

        if not self.interrupted:  # a collective: every rank asks rank 0's flag
            return
        trainer.should_stop = True
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))
        sys.exit(130 if self.sig == signal.SIGINT else 0)
