"""Training callbacks: the machine-readable metrics log and the console progress line.

Metrics exist on the ranks of the last pipeline stage (where NeMo reduces the loss); the
rank with tensor- and data-parallel rank 0 there writes them:

- ``metrics.jsonl``: one line per optimizer step ``{"step", "loss", "step_accuracy",
  "step_mae", "tokens_per_s", "grad_norm", "lr", "consumed_samples", "time"}`` (``grad_norm``:
  the global norm before clipping) and one per validation
  ``{"step", "split": "validation", "loss", "step_accuracy", ...}``;
- ``samples.jsonl`` (``logging.sample_ids``): ``{"step", "sample_ids"}`` per step.

On resume, lines of steps after the checkpoint the run resumes from are dropped first: those
steps run again, and the log then reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L

from nemo_erprm.jsonl import JsonlAppender


def is_metrics_rank() -> bool:
    from megatron.core import parallel_state as ps

    return (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
            and ps.get_data_parallel_rank() == 0)


def truncate_after_step(path: Path, step: int) -> None:
    """Keep the lines with ``step <= step`` (atomic rewrite); a torn last line is dropped."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def current_lr(trainer: Any) -> Optional[float]:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError):
        return None


def current_grad_norm(trainer: Any) -> Optional[float]:
    """The global gradient norm of this step before clipping, as megatron's optimizer returned
    it (NeMo's strategy logs it as ``grad_norm``). megatron 0.15's ``ChainedOptimizer.step``
    computes it at every step, clipping on or off; a step it skips (an fp16 loss-scale
    overflow; bf16 and fp32 never skip) returns none, so the previous step's value stands."""
    value = trainer.callback_metrics.get("grad_norm")
    return None if value is None else float(value)


def announce_preemption(trainer: Any) -> None:
    """One console line when a stop signal arrived: NeMo's PreemptionCallback (later in the
    callback list) then writes a checkpoint and exits, and says so only in the library log.
    Reads the callback's local flag on global rank 0, where NeMo's handler sets it (its
    ``interrupted`` property is a collective and cannot be called from one rank)."""
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) != 0:
        return
    for cb in trainer.callbacks:
        if getattr(cb, "_interrupted", False) and hasattr(cb, "sig"):
            print(f"{signal.Signals(cb.sig).name} received: writing a checkpoint at step {trainer.global_step} and "
                  f"exiting; rerun the same command to resume", flush=True)
            return


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainingMetrics(L.Callback):
    """Writes metrics.jsonl (and samples.jsonl) and prints one progress line per
    ``log_every_n_steps`` optimizer steps: step, loss, step accuracy, tokens/s, lr, ETA."""

    def __init__(self, run_dir: str, log_every_n_steps: int = 1, sample_ids: bool = False,
                 global_batch_size: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.log_every = max(1, log_every_n_steps)
        self.sample_ids = sample_ids
        self.global_batch_size = global_batch_size
        self._writer = self._samples = None
        self._t_last: Optional[float] = None
        self._t_start: Optional[float] = None
        self._start_step = 0
        self.started = False  # Lightning skips the training loop of a run that already reached max_steps

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = True
        self._start_step = trainer.global_step
        self._t_start = self._t_last = time.perf_counter()
        if not is_metrics_rank():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_after_step(self.run_dir / name, trainer.global_step)
        self._writer = JsonlAppender(self.run_dir / "metrics.jsonl")
        if self.sample_ids:
            self._samples = JsonlAppender(self.run_dir / "samples.jsonl")
        if trainer.global_step:
            print(f"resumed at step {trainer.global_step} from {trainer.ckpt_path}", flush=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t_last = time.perf_counter()  # step time excludes validation and checkpoint saves
        pl_module.training_loss_reduction.start_step()  # nothing left over from an aborted step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        elapsed = now - (self._t_last or now)
        announce_preemption(trainer)
        if self._writer is None:
            return
        reduction = pl_module.training_loss_reduction
        m = reduction.last_metrics
        if not m:
            return
        step = trainer.global_step
        rec = {
            "step": step,
            "loss": m["loss"],
            "step_accuracy": m["step_accuracy"],
            "step_mae": m["step_mae"],
            "tokens_per_s": m.get("tokens", 0.0) / elapsed if elapsed > 0 else None,
            "grad_norm": current_grad_norm(trainer),
            "lr": current_lr(trainer),
            "consumed_samples": step * self.global_batch_size,
            "time": time.time(),
        }
        self._writer.append([rec])
        if self._samples is not None:
            self._samples.append([{"step": step, "sample_ids": reduction.last_sample_ids}])
        if step % self.log_every == 0 or step == trainer.max_steps:
            done = step - self._start_step
            rate = (now - self._t_start) / done if done else 0.0
            eta = format_eta(rate * (trainer.max_steps - step))
            tps = rec["tokens_per_s"] or 0.0
            lr = rec["lr"] if rec["lr"] is not None else float("nan")
            gnorm = f" | grad norm {rec['grad_norm']:.3f}" if rec["grad_norm"] is not None else ""
            print(f"step {step}/{trainer.max_steps} | loss {m['loss']:.4f} | step acc {m['step_accuracy']:.3f}"
                  f"{gnorm} | {tps:,.0f} tok/s | lr {lr:.2e} | ETA {eta}", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not is_metrics_rank():
            return
        metrics = getattr(_step_metrics_logger(trainer), "last_validation", None)
        if not metrics:
            return
        rec = {"step": trainer.global_step, "split": "validation", **metrics, "time": time.time()}
        if self._writer is None:  # validate-only runs: no training start
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = JsonlAppender(self.run_dir / "metrics.jsonl")
        self._writer.append([rec])
        print(f"validation @ step {rec['step']} | loss {metrics['loss']:.4f} | "
              f"step acc {metrics['step_accuracy']:.3f} | MAE {metrics['step_mae']:.3f} "
              f"({int(metrics.get('num_steps', 0))} steps)", flush=True)


def _step_metrics_logger(trainer):
    from nemo_erprm.nemo.callbacks import StepMetricsLogger

    return next((cb for cb in trainer.callbacks if isinstance(cb, StepMetricsLogger)), None)


class StopAfterSteps(L.Callback):
    """End this invocation after ``steps`` optimizer steps with a checkpoint, as a pre-empted
    job does (``trainer.stop_after_steps``: time-boxed jobs; rerunning continues the run)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self._start = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step - self._start < self.steps or trainer.global_step >= trainer.max_steps:
            return
        trainer.should_stop = True
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))


class FinalCheckpoint(L.Callback):
    """The run always ends with a checkpoint of its last step. (NeMo's ModelCheckpoint skips the
    end-of-training save when the last step is a multiple of the validation interval, counting
    on a validation-time save that does not happen without a held-out split.)"""

    def on_train_end(self, trainer, pl_module) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is None or trainer.global_step == 0 or ckpt._last_global_step_saved == trainer.global_step:
            return
        ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))


class ValidateAtIntervalAndEnd(L.Callback):
    """Validation every ``trainer.val_check_interval`` optimizer steps and after the last one,
    not also at every epoch's end. Lightning 2.4's epoch loop validates after the last batch of
    each epoch whenever the training step reads a dataloader iterator
    (``_TrainingEpochLoop._should_check_val_fx``: ``is_last_batch and isinstance(data_fetcher,
    _DataLoaderIterDataFetcher)``), which NeMo's megatron strategy always does. The rule of the
    loop in use is kept and only narrowed (a stop request still validates); it is wrapped at
    train start because ``llm.train`` replaces the epoch loop (NeMo's no-validation-on-restart
    loop) after the trainer is built."""

    def on_train_start(self, trainer, pl_module) -> None:
        loop = trainer.fit_loop.epoch_loop
        loop_rule = loop._should_check_val_fx

        def should_check_val(data_fetcher: Any) -> bool:
            if not loop_rule(data_fetcher):
                return False
            step = loop.global_step  # optimizer steps done, this one included
            return step % trainer.val_check_batch == 0 or step >= trainer.max_steps or trainer.should_stop

        loop._should_check_val_fx = should_check_val

