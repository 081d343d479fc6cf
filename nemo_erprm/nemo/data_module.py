"""`ERPRMDataModule`: labeled step data for NeMo's trainer with megatron data-parallel sampling.

Reads the labeling stage's records (or ``text_value`` / ``trl`` files), renders and
tokenizes them once (cached with `datasets` under ``cache_dir``), optionally packs several
samples per row, and serves fixed-length rows through NeMo's `MegatronDataSampler`
(micro/global batch sizes, data-parallel slicing). The number of consumed samples is saved
in checkpoints and restored on resume, so a resumed run continues where it stopped.
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

from nemo_erprm.data.collate import collate_rows, pack_rows
from nemo_erprm.data.examples import load_examples
from nemo_erprm.data.tokenize import add_step_tag_token, tokenize_dataset

logger = logging.getLogger(__name__)


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


class ERPRMDataModule(L.LightningDataModule, io.IOMixin):
    def __init__(
        self,
        train_path: str,
        tokenizer: Any,
        val_path: Optional[str] = None,
        step_tag: str = "ки",
        add_step_tag_token: bool = False,
        data_format: str = "auto",
        eta: float = 2.0,
        seq_length: int = 512,
        micro_batch_size: int = 1,
        global_batch_size: int = 64,
        packing: bool = False,
        shuffle: bool = True,
        seed: int = 1234,
        num_workers: int = 0,
        num_proc: Optional[int] = None,
        cache_dir: Optional[str] = None,
    ):
        super().__init__()
        self.train_path, self.val_path = train_path, val_path
        self.tokenizer = tokenizer
        self.step_tag, self.add_step_tag_token = step_tag, add_step_tag_token
        self.data_format, self.eta = data_format, eta
        self.seq_length, self.packing = seq_length, packing
        self.micro_batch_size, self.global_batch_size = micro_batch_size, global_batch_size
        self.shuffle, self.seed = shuffle, seed
        self.num_workers, self.num_proc, self.cache_dir = num_workers, num_proc, cache_dir
        self.init_global_step = 0
        self.counts: dict[str, dict[str, int]] = {}
        self.data_sampler = MegatronDataSampler(
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
        self._train_ds, self.counts["train"] = build_split(
            self.train_path, tok, shuffle_seed=self.seed if self.shuffle else None, **common)
        if self.val_path:
            self._val_ds, self.counts["validation"] = build_split(self.val_path, tok, shuffle_seed=None, **common)
        for split, c in self.counts.items():
            logger.info("ER-PRM %s data: %s", split, c)
        if hasattr(self, "trainer") and self.trainer is not None:
            self.init_global_step = self.trainer.global_step
            self.data_sampler.init_global_step = self.init_global_step

    def _loader(self, ds: RowDataset) -> DataLoader:
        return DataLoader(
            ds,
            num_workers=self.num_workers,
            collate_fn=partial(_collate, seq_length=self.seq_length, pad_id=self.pad_id),
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self._train_ds)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self._loader(self._val_ds) if hasattr(self, "_val_ds") else []

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


def _collate(batch: list[list[dict[str, Any]]], seq_length: int, pad_id: int):
    return collate_rows(batch, seq_length, pad_id)
