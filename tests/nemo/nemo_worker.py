"""Trains `ERPRMModel` through NeMo's Trainer + MegatronStrategy on the CPU backend.

    python tests/nemo/nemo_worker.py --out OUT.json --workdir DIR [--steps N]        # one process
    torchrun --nproc_per_node 2 tests/nemo/nemo_worker.py --pp 2 ...                 # pipeline

Task: synthetic step data whose label is a function of the step text (a step is good iff
it contains the word "yes"); a tiny Llama learns it. Writes the validation metrics over
training and the DataModule's consumed-samples state.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nemo_erprm.runtime.cpu_backend import enable_cpu_backend  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def write_task(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            steps, values = [], []
            for _ in range(rng.randint(2, 4)):
                words = [rng.choice(WORDS) for _ in range(3)]
                good = rng.random() < 0.5
                if good:
                    words.insert(rng.randint(0, 3), "yes")
                steps.append(" ".join(words))
                values.append(1.0 if good else 0.0)
            f.write(json.dumps({"prompt": "Check each step.", "completions": steps, "labels": values}) + "\n")


def main(args) -> None:
    enable_cpu_backend()
    import torch
    import nemo.lightning as nl
    from megatron.core.optimizer import OptimizerConfig
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer

    from nemo_erprm.nemo.callbacks import StepMetricsLogger
    from nemo_erprm.nemo.config import ERPRMLlamaConfig
    from nemo_erprm.nemo.data_module import ERPRMDataModule
    from nemo_erprm.nemo.model import ERPRMModel
    from tests.tiny_models import build_tiny_llama

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rank = int(__import__("os").environ.get("RANK", 0))
    model_dir = work / "tiny_llama"
    train, val = work / "train.jsonl", work / "val.jsonl"
    if rank == 0 and not (model_dir / "config.json").exists():
        build_tiny_llama(model_dir)
        write_task(train, 600, seed=1)
        write_task(val, 64, seed=2)
    if args.pp * args.tp > 1:
        import time

        while not (model_dir / "tokenizer.json").exists() or not val.exists():
            time.sleep(0.2)
        time.sleep(0.5)
    tok = AutoTokenizer(str(model_dir))
    hf = tok.tokenizer
    cfg = ERPRMLlamaConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
        seq_length=64, vocab_size=len(hf), share_embeddings_and_output_weights=False, head=args.head,
        plus_token_id=hf.convert_tokens_to_ids("+"), minus_token_id=hf.convert_tokens_to_ids("-"),
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32, pipeline_dtype=torch.float32,
        bf16=False,
    )
    opt = nl.MegatronOptimizerModule(OptimizerConfig(
        optimizer="adam", lr=args.lr, use_distributed_optimizer=False, bf16=False, params_dtype=torch.float32,
        clip_grad=1.0))
    model = ERPRMModel(cfg, optim=opt, tokenizer=tok)
    data = ERPRMDataModule(str(train), tok, val_path=str(val), seq_length=64, micro_batch_size=4,
                           global_batch_size=8, packing=args.packing, cache_dir=str(work / "cache"))
    metrics = StepMetricsLogger()
    history = []

    class Record(nl.pytorch.callbacks.ModelCheckpoint.__mro__[-2]):  # a plain Lightning Callback
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking and hasattr(metrics, "last_validation"):
                history.append({"step": trainer.global_step, **metrics.last_validation})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            history.append({"step": trainer.global_step, "train": dict(pl_module.training_loss_reduction.last_metrics)})

    strategy = nl.MegatronStrategy(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp,
                                   replace_progress_bar=False, ckpt_load_strictness="log_all")
    trainer = nl.Trainer(
        accelerator="cpu", devices=args.tp * args.pp, max_steps=args.steps, strategy=strategy,
        val_check_interval=args.val_every, limit_val_batches=8, num_sanity_val_steps=0,
        enable_checkpointing=False, logger=False, enable_progress_bar=False,
        callbacks=[metrics, Record()], plugins=nl.MegatronMixedPrecision(precision="32"),
    )
    trainer.fit(model, data)
    state = data.state_dict()
    fresh = ERPRMDataModule(str(train), tok, seq_length=64, micro_batch_size=4, global_batch_size=8)
    fresh.load_state_dict(state)
    from megatron.core import parallel_state as ps

    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        Path(args.out).write_text(json.dumps({
            "history": history,
            "consumed_samples": state["consumed_samples"],
            "restored_consumed_samples": fresh.data_sampler.init_consumed_samples,
            "counts": data.counts,
        }))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--val-every", type=int, default=30)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--head", default="lm_tokens")
    p.add_argument("--packing", action="store_true")
    main(p.parse_args())
