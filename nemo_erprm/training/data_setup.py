"""The data side of a run: the data module (labeled records, held-out split, packing,
padding), the number of steps it makes, and ``data_summary.json``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nemo_erprm.errors import ConfigError
from nemo_erprm.training.launch import global_rank

if TYPE_CHECKING:
    from nemo_erprm.training.config import TrainConfig


@dataclass
class Schedule:
    steps_per_epoch: int
    max_steps: int


def build_data_module(cfg: TrainConfig, tokenizer: Any, prm_config: Any) -> Any:
    """:class:`ERPRMDataModule` on ``data.train`` (and ``data.validation`` or a held-out fraction)."""
    from nemo_erprm.nemo.data_module import ERPRMDataModule
    from nemo_erprm.training.effective import effective_pad_to

    m, d = cfg.model, cfg.data
    return ERPRMDataModule(
        d.train, tokenizer, val_path=d.validation, val_fraction=d.val_fraction, step_tag=prm_config.step_tag,
        data_format=d.format, eta=d.eta, seq_length=prm_config.seq_length, micro_batch_size=d.micro_batch_size,
        global_batch_size=d.global_batch_size, packing=d.packing, pad_to=effective_pad_to(cfg),
        # the width multiple follows the layout: SP splits rows over TP, FP8 GEMMs take whole blocks
        tensor_parallel=m.tensor_model_parallel_size, sequence_parallel=m.sequence_parallel, fp8=m.fp8,
        fp8_recipe=m.fp8_recipe,
        shuffle=d.shuffle, seed=cfg.run.seed,
        num_workers=d.num_workers, num_proc=d.num_proc, cache_dir=str(cfg.run_dir / "data_cache"),
    )


def plan_steps(cfg: TrainConfig, data: Any) -> Schedule:
    """Optimizer steps: ``trainer.max_steps``, else ``trainer.max_epochs`` of full global batches."""
    d, t = cfg.data, cfg.trainer
    steps_per_epoch = data.num_train_rows // d.global_batch_size
    max_steps = t.max_steps or math.floor(t.max_epochs * steps_per_epoch)
    if (steps_per_epoch < 1 or max_steps < 1) and not t.validate_only:
        raise ConfigError(f"data.train: {data.num_train_rows} rows ({'packed' if d.packing else 'one sample each'}) "
                          f"make no full global batch of {d.global_batch_size}; lower data.global_batch_size, "
                          f"turn data.packing off or add data")
    return Schedule(steps_per_epoch, max_steps)


def report_data(cfg: TrainConfig, data: Any, schedule: Schedule) -> None:
    """``data_summary.json`` and the console lines about the data (rank 0)."""
    if global_rank() != 0:
        return
    d = cfg.data
    val_rows = data.counts.get("validation", {}).get("rows", 0)
    if data.has_validation and val_rows < d.global_batch_size:
        print(f"warning: the held-out split has {val_rows} rows, fewer than a global batch of "
              f"{d.global_batch_size}: validation will not run (raise data.val_fraction)", flush=True)
    # With packing the global batch counts packed rows, not samples (the paper's "global batch
    # 64" is 64 samples): say how many samples a step really holds.
    train_counts = data.counts.get("train", {})
    samples_per_row = train_counts.get("kept", 0) / max(train_counts.get("rows", 0), 1)
    summary = {"splits": data.counts, "steps_per_epoch": schedule.steps_per_epoch, "max_steps": schedule.max_steps,
               "global_batch_size": d.global_batch_size, "global_batch_unit": "rows",
               "samples_per_row": round(samples_per_row, 3),
               "samples_per_step": round(samples_per_row * d.global_batch_size, 1)}
    (cfg.run_dir / "data_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if d.packing:
        print(f"global batch: {d.global_batch_size} packed rows of {data.seq_length} tokens = "
              f"~{samples_per_row * d.global_batch_size:.0f} samples per step "
              f"({samples_per_row:.2f} samples per row)", flush=True)
