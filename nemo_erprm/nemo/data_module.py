"""`ERPRMDataModule`: labeled step data for NeMo's trainer with megatron data-parallel sampling.

Reads the labeling stage's records (or ``text_value`` / ``trl`` files), renders and
tokenizes them once (cached with `datasets` under ``cache_dir``), optionally packs several
samples per row, and serves rows through NeMo's `MegatronDataSampler`
(micro/global batch sizes, data-parallel slicing). The number of consumed samples is saved
in checkpoints and restored on resume, so a resumed run continues where it stopped.
Each micro-batch is padded to its longest row (``pad_to="longest"``, rounded up to what the
layout needs: sequence parallelism, Transformer Engine's FP8 row blocks) or to ``seq_length``
(``"max_length"``): see :mod:`nemo_erprm.data.collate`.
"""

from __future__ import annotations

import logging
import random
from functools import partial
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L
from nemo.lightning import io
from nemo.lightning.pytorch.plugins import MegatronDataSampler
from torch.utils.data import DataLoader, Dataset

from nemo_erprm.data.collate import (PAD_TO, check_seq_length, collate_rows, effective_pad_to, pack_rows,
                                     pad_multiple as layout_pad_multiple, required_multiple)
from nemo_erprm.data.examples import held_out, load_examples
from nemo_erprm.data.tokenize import add_step_tag_token, tokenize_dataset
from nemo_erprm.errors import ConfigError

logger = logging.getLogger(__name__)


def _pipeline_stages() -> int:
    """Pipeline-parallel world size of this process (1 before megatron's groups exist)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 1
    return parallel_state.get_pipeline_model_parallel_world_size()


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer behind a NeMo `AutoTokenizer`, a path, or an HF tokenizer."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer))
    return getattr(tokenizer, "tokenizer", tokenizer)


class RowDataset(Dataset):
    """Rows of samples (one per row, or several when packed)."""

    def __init__(self, samples: list[dict[str, Any]], rows: list[list[int]]):
        self.samples, self.rows = samples, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int) -> list[dict[str, Any]]:
        return [self.samples[i] for i in self.rows[idx]]


def build_split(
    path: str,
    tokenizer: Any,
    *,
    select: Optional[Any] = None,
    step_tag: str,
    data_format: str,
    eta: float,
    seq_length: int,
    packing: bool,
    shuffle_seed: Optional[int],
    cache_dir: Optional[str],
    num_proc: Optional[int],
) -> tuple[RowDataset, dict[str, int]]:
    examples = load_examples(path, data_format, eta, step_tag)
    file_id = f"{Path(path).resolve()}:{Path(path).stat().st_size}:{Path(path).stat().st_mtime_ns}:{data_format}:{eta}"
    if select is not None:  # (name, predicate on the example's group): one side of a split
        name, keep = select
        examples = [e for e in examples if keep(e["group"])]
        file_id += f":{name}"
        if not examples:
            raise ConfigError(f"{path}: the {name} split is empty (too few problems for data.val_fraction?)")
    ds, counts = tokenize_dataset(examples, tokenizer, step_tag, seq_length, cache_dir, file_id, num_proc)
    samples = [
        {"input_ids": ids, "tag_positions": pos, "targets": tgt, "sample_index": i}
        for i, (ids, pos, tgt) in enumerate(zip(ds["input_ids"], ds["tag_positions"], ds["targets"]))
    ]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(samples)
    rows = pack_rows([len(s["input_ids"]) for s in samples], seq_length, packing)
    counts["rows"] = len(rows)
    counts["steps"] = sum(len(s["targets"]) for s in samples)
    return RowDataset(samples, rows), counts


class _FromOffsetThenFromStart:
    """Batch sampler for a run resumed mid-epoch: the first pass starts at the saved offset,
    every later epoch at the beginning (megatron's sampler would start each epoch at it).
    Each pass ends with the epoch's last full global batch, as in an uninterrupted run (the
    inner sampler would also yield the micro-batches of the incomplete last one). A run
    resumed exactly at an epoch's end gets an empty first pass: Lightning restores it inside
    the finished epoch and starts the next one when that pass ends."""

    def __init__(self, inner: Any, epoch_samples: int, first_pass_empty: bool):
        self.inner, self.epoch_samples, self.first_pass_empty = inner, epoch_samples, first_pass_empty

    def __iter__(self):
        micro = self.inner.micro_batch_times_data_parallel_size
        count = 0 if self.first_pass_empty else (self.epoch_samples - self.inner.consumed_samples) // micro
        self.first_pass_empty = False
        for i, batch in enumerate(self.inner):
            if i >= count:
                break
            yield batch
        self.inner.consumed_samples = 0

    def __len__(self) -> int:
        return len(self.inner)


class ERPRMDataSampler(MegatronDataSampler):
    """NeMo's sampler plugin, epoch-aware: a resumed run's consumed samples (counted over all
    epochs) become an offset inside the current epoch (an epoch = the full global batches of
    the train split; the incomplete last one is dropped, as in an uninterrupted run)."""

    epoch_samples: int = 0

    def transform_dataloader(self, dataloader: DataLoader, consumed_samples: int = 0) -> DataLoader:
        if getattr(dataloader, "mode", "train") != "train" or not self.epoch_samples:
            return super().transform_dataloader(dataloader, consumed_samples)
        total = self.init_consumed_samples
        self.init_consumed_samples = total % self.epoch_samples
        try:
            loader = super().transform_dataloader(dataloader, consumed_samples)
        finally:
            self.init_consumed_samples = total
        sampler = _FromOffsetThenFromStart(loader.batch_sampler, self.epoch_samples,
                                           first_pass_empty=total > 0 and total % self.epoch_samples == 0)
        return DataLoader(loader.dataset, batch_sampler=sampler, num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn)


class ERPRMDataModule(L.LightningDataModule, io.IOMixin):
    def __init__(
        self,
        train_path: str,
        tokenizer: Any,
        val_path: Optional[str] = None,
        val_fraction: float = 0.0,
        step_tag: str = "ки",
        add_step_tag_token: bool = False,
        data_format: str = "auto",
        eta: float = 2.0,
        seq_length: int = 512,
        micro_batch_size: int = 1,
        global_batch_size: int = 64,
        packing: bool = False,
        pad_to: str = "longest",
        pad_multiple: Optional[int] = None,
        tensor_parallel: int = 1,
        sequence_parallel: bool = False,
        fp8: Optional[str] = None,
        fp8_recipe: str = "delayed",
        shuffle: bool = True,
        seed: int = 1234,
        num_workers: int = 0,
        num_proc: Optional[int] = None,
        cache_dir: Optional[str] = None,
    ):
        super().__init__()
        self.train_path, self.val_path, self.val_fraction = train_path, val_path, val_fraction
        self.tokenizer = tokenizer
        self.step_tag, self.add_step_tag_token = step_tag, add_step_tag_token
        self.data_format, self.eta = data_format, eta
        self.seq_length, self.packing = seq_length, packing
        if pad_to not in PAD_TO:
            raise ConfigError(f"data.pad_to must be one of {PAD_TO}, got {pad_to!r}")
        # The model's layout decides what a micro-batch's width must be a multiple of
        # (collate.required_multiple); `pad_multiple` may only round to a multiple of that.
        layout = dict(tensor_parallel=tensor_parallel, sequence_parallel=sequence_parallel, fp8=fp8,
                      fp8_recipe=fp8_recipe, micro_batch_size=micro_batch_size)
        check_seq_length(seq_length, **layout)
        need = required_multiple(**layout)
        if pad_multiple is None:
            pad_multiple = layout_pad_multiple(**layout)
        elif pad_multiple % need:
            raise ConfigError(f"pad_multiple={pad_multiple} must be a multiple of {need} for this layout "
                              f"({', '.join(f'{k}={v}' for k, v in layout.items())})")
        self.pad_to, self.pad_multiple = pad_to, pad_multiple
        self.micro_batch_size, self.global_batch_size = micro_batch_size, global_batch_size
        self.shuffle, self.seed = shuffle, seed
        self.num_workers, self.num_proc, self.cache_dir = num_workers, num_proc, cache_dir
        self.init_global_step = 0
        self.counts: dict[str, dict[str, int]] = {}
        self.data_sampler = ERPRMDataSampler(
            seq_len=seq_length, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size,
            dataloader_type="single",
        )

    def setup(self, stage: str = "") -> None:
        if hasattr(self, "_train_ds"):
            return
        tok = hf_tokenizer(self.tokenizer)
        if self.add_step_tag_token:
            add_step_tag_token(tok, self.step_tag)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        common = dict(step_tag=self.step_tag, data_format=self.data_format, eta=self.eta,
                      seq_length=self.seq_length, packing=self.packing, cache_dir=self.cache_dir,
                      num_proc=self.num_proc)
        split_train = None
        if not self.val_path and self.val_fraction > 0:  # hold out whole problems of the train file
            fraction = self.val_fraction
            split_train = (f"train-{fraction}", lambda g: not held_out(g, fraction))
            split_val = (f"validation-{fraction}", lambda g: held_out(g, fraction))
            self._val_ds, self.counts["validation"] = build_split(
                self.train_path, tok, shuffle_seed=None, select=split_val, **common)
        elif self.val_path:
            self._val_ds, self.counts["validation"] = build_split(self.val_path, tok, shuffle_seed=None, **common)
        self._train_ds, self.counts["train"] = build_split(
            self.train_path, tok, shuffle_seed=self.seed if self.shuffle else None, select=split_train, **common)
        self.data_sampler.epoch_samples = len(self._train_ds) // self.global_batch_size * self.global_batch_size
        for split, c in self.counts.items():
            logger.info("ER-PRM %s data: %s", split, c)

    def _loader(self, ds: RowDataset, mode: str) -> DataLoader:
        from nemo.lightning.data import WrappedDataLoader

        # Built after a checkpoint is restored: the step a resumed run starts from is known
        # here (not yet in `setup`), and the sampler counts consumed samples from it. `mode`
        # tells NeMo's sampler wrapper that only the train loader skips consumed samples.
        if getattr(self, "trainer", None) is not None:
            self.init_global_step = self.trainer.global_step
            self.data_sampler.init_global_step = self.init_global_step
        pad_to = effective_pad_to(self.pad_to, _pipeline_stages())
        if pad_to != self.pad_to:
            logger.warning("ER-PRM data: pad_to=%r requested, padding to seq_length=%d: "
                           "pipeline stages exchange activations of one fixed length", self.pad_to, self.seq_length)
        return WrappedDataLoader(
            mode=mode,
            dataset=ds,
            num_workers=self.num_workers,
            collate_fn=partial(_collate, seq_length=self.seq_length, pad_id=self.pad_id,
                               pad_multiple=self.pad_multiple if pad_to == "longest" else None),
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self._train_ds, "train")

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self._loader(self._val_ds, "validation") if hasattr(self, "_val_ds") else []

    @property
    def has_validation(self) -> bool:
        self.setup()
        return hasattr(self, "_val_ds")

    @property
    def num_train_rows(self) -> int:
        self.setup()
        return len(self._train_ds)

    def state_dict(self) -> dict[str, Any]:
        consumed = self.data_sampler.compute_consumed_samples(self.trainer.global_step - self.init_global_step)
        return {"consumed_samples": consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from megatron.core.num_microbatches_calculator import update_num_microbatches

        consumed = state_dict["consumed_samples"]
        self.data_sampler.init_consumed_samples = consumed
        self.data_sampler.prev_consumed_samples = consumed
        update_num_microbatches(consumed_samples=consumed, consistency_check=False)
        self.data_sampler.if_first_step = 1

    def reconfigure_limit_batches(self) -> None:
        from megatron.core.num_microbatches_calculator import get_num_microbatches
        from nemo.collections.llm.gpt.data.utils import _reconfigure_limit_batches

        self.trainer.limit_train_batches = _reconfigure_limit_batches(self.trainer.limit_train_batches, self._train_ds)
        if hasattr(self, "_val_ds"):
            self.trainer.limit_val_batches = _reconfigure_limit_batches(self.trainer.limit_val_batches, self._val_ds)
        self.trainer.num_sanity_val_steps *= get_num_microbatches()


def _collate(batch: list[list[dict[str, Any]]], seq_length: int, pad_id: int, pad_multiple: Optional[int] = None):
    return collate_rows(batch, seq_length, pad_id, pad_multiple=pad_multiple)
