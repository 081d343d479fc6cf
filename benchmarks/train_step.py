#!/usr/bin/env python
"""One ER-PRM training step: our megatron PRM vs the reference ER-PRM approach.

Both sides train the same SmolLM2-135M-shaped Llama (random weights; 30 layers, hidden 576,
vocab 49,152, tied embeddings) on the same labeled GSM8K samples (train questions + reference
solutions, one step tag per step, ER labels), with the same threads and AdamW:

- reference (the ER-PRM code's design): Hugging Face `LlamaForCausalLM` forward producing
  full-vocabulary logits for every position, each sample padded to the sequence length,
  then 2-way soft cross-entropy over the (+, -) logits at the tag positions;
- ours: `ERPRMGPTModel` on megatron-core (CPU backend), hidden states gathered at the tags
  before the `lm_tokens` head, several samples packed per row (`--no-packing` to compare
  without), megatron's activation recompute (`--recompute full|selective|none`, default
  full: each layer recomputed in backward, one layer per checkpoint), megatron's schedule
  and optimizer.

Each side runs in a fresh process: warm-up step, then timed steps. The sides alternate,
reference then ours, for ``--rounds`` rounds (default 3), so a machine that gets busy slows
both alike; each round gives a ratio, and the median ratio counts (its min-max range is
printed). Throughput counts real (non-padding) tokens per second; memory is the peak RSS
sampled during the steps. Ours pads each micro-batch to its longest row as training does
(``data.pad_to``; ``--pad-to max_length`` pads to ``--seq-length``). Prints both ratios:
targets >= 1.5x tokens/s (with packing) and <= 0.6x peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = dict(hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, vocab=49152)
RECOMPUTE_CHOICES = ("full", "none", "selective")  # nemo_erprm.model.build.RECOMPUTE


class PeakRSS:
    """Samples this process's RSS every few ms in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def load_samples(n: int, seq_length: int, data: Path):
    """Tokenized GSM8K train samples with single-token tags (SmolLM2 tokenizer)."""
    from transformers import AutoTokenizer

    from nemo_erprm.data.tokenize import StepTokenizer, suggest_step_tags
    from nemo_erprm.embedded import resolve_model_path
    from nemo_erprm.labeling.problems import gsm8k_gold
    from nemo_erprm.labeling.segmentation import SegmentationConfig, render_prm_input, split_steps

    where, gguf = resolve_model_path("smollm2")
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    tag = suggest_step_tags(tok)[0]
    st = StepTokenizer(tok, tag, seq_length)
    samples = []
    with (data / "gsm8k" / "train.jsonl").open() as f:
        for i, line in enumerate(f):
            if len(samples) == n:
                break
            row = json.loads(line)
            assert gsm8k_gold(row["answer"]) is not None
            steps = split_steps(row["answer"], SegmentationConfig(step_tag=tag))
            text = render_prm_input(row["question"], steps, tag)
            values = [((i * 7 + k) % 10) / 10 for k in range(len(steps))]  # ER-like soft labels
            ex = st(text, values)
            samples.append({"input_ids": ex.input_ids, "tag_positions": ex.tag_positions,
                            "targets": ex.targets, "sample_index": i})
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    return samples, plus, minus


def run_reference(args) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    samples, plus, minus = load_samples(args.samples, args.seq_length, Path(args.data))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"], intermediate_size=SHAPE["ffn"],
                      num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
                      num_key_value_heads=SHAPE["kv_heads"], tie_word_embeddings=True,
                      max_position_embeddings=2048, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    s = args.seq_length

    def step():
        opt.zero_grad()
        n_steps = sum(len(x["targets"]) for x in samples)
        for start in range(0, len(samples), args.micro_batch):
            chunk = samples[start:start + args.micro_batch]
            ids = torch.zeros(len(chunk), s, dtype=torch.long)
            att = torch.zeros(len(chunk), s, dtype=torch.long)
            for r, x in enumerate(chunk):
                ids[r, :len(x["input_ids"])] = torch.tensor(x["input_ids"])
                att[r, :len(x["input_ids"])] = 1
            logits = model(input_ids=ids, attention_mask=att).logits.float()  # [b, s, vocab]
            rows = torch.cat([torch.full((len(x["tag_positions"]),), r) for r, x in enumerate(chunk)])
            cols = torch.cat([torch.tensor(x["tag_positions"]) for x in chunk])
            y = torch.cat([torch.tensor(x["targets"]) for x in chunk])
            pm = logits[rows, cols][:, [plus, minus]]
            loss = F.cross_entropy(pm, torch.stack([y, 1 - y], 1), reduction="sum") / n_steps
            loss.backward()
        opt.step()

    return time_steps(step, samples, args)


def run_ours(args) -> dict:
    import torch
    import torch.nn.functional as F

    from nemo_erprm.runtime.cpu_backend import adapt_config_for_cpu, enable_cpu_backend

    enable_cpu_backend()
    torch.set_num_threads(args.threads)
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_erprm.data.collate import BASE_PAD_MULTIPLE, collate_rows, pack_rows
    from nemo_erprm.model.build import RECOMPUTE, build_prm_model
    from nemo_erprm.model.megatron_step import build_optimizer, train_step, wrap_ddp
    from nemo_erprm.runtime.parallel import init_distributed

    init_distributed(1, 1)
    samples, plus, minus = load_samples(args.samples, args.seq_length, Path(args.data))
    cfg = adapt_config_for_cpu(TransformerConfig(
        num_layers=SHAPE["layers"], hidden_size=SHAPE["hidden"], num_attention_heads=SHAPE["heads"],
        num_query_groups=SHAPE["kv_heads"], ffn_hidden_size=SHAPE["ffn"], normalization="RMSNorm",
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0,
        attention_dropout=0.0, use_cpu_initialization=True, params_dtype=torch.float32,
        calculate_per_token_loss=True, layernorm_epsilon=1e-5,
        **RECOMPUTE[args.recompute]))  # imported after the CPU backend is enabled
    model = build_prm_model(cfg, SHAPE["vocab"], args.seq_length, head="lm_tokens", plus_token_id=plus,
                            minus_token_id=minus, share_embeddings_and_output_weights=True)
    ddp = wrap_ddp(model)
    opt = build_optimizer([ddp], lr=1e-6, clip_grad=0.0)
    rows = pack_rows([len(x["input_ids"]) for x in samples], args.seq_length, args.packing)
    micro = args.micro_batch if not args.packing else max(1, min(args.micro_batch, len(rows)))
    row_samples = [[samples[i] for i in r] for r in rows]
    multiple = BASE_PAD_MULTIPLE if args.pad_to == "longest" else None
    microbatches = [collate_rows(row_samples[i:i + micro], args.seq_length, 0, pad_multiple=multiple)
                    for i in range(0, len(row_samples), micro)]

    def step():
        train_step([ddp], opt, microbatches, "lm_tokens", args.seq_length, micro)

    out = time_steps(step, samples, args)
    out["rows"] = len(rows)
    out["padded_tokens"] = sum(int(mb["tokens"].numel()) for mb in microbatches)
    return out


def time_steps(step, samples, args) -> dict:
    import torch

    real_tokens = sum(len(x["input_ids"]) for x in samples)
    step()  # warm-up
    times = []
    with PeakRSS() as mem:
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    best = min(times)
    return {"tokens_per_s": real_tokens / best, "step_s": best, "peak_rss_gb": mem.peak / 1e9,
            "real_tokens": real_tokens, "threads": torch.get_num_threads()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-packing", dest="packing", action="store_false")
    p.add_argument("--recompute", choices=RECOMPUTE_CHOICES, default="full",
                   help="ours: megatron activation recompute (full: every layer, uniform, 1 layer per checkpoint)")
    p.add_argument("--pad-to", choices=("longest", "max_length"), default="longest",
                   help="ours: micro-batch width, its longest row (rounded up to 16, as training) or --seq-length")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds (reference, ours), each side a fresh process; the median ratio counts")
    p.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        result = run_ours(args) if args.side == "ours" else run_reference(args)
        print("RESULT " + json.dumps(result))
        return 0
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    runs: dict[str, list[dict]] = {"reference": [], "ours": []}
    for _ in range(args.rounds):
        for side in ("reference", "ours"):
            cmd = [sys.executable, __file__, "--side", side] + [a for a in sys.argv[1:]]
            # A fixed mmap threshold makes glibc return freed large tensors to the OS, so RSS shows
            # the working set rather than allocator high-water marks (same for both sides).
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            runs[side].append(json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0]))
    speeds = [o["tokens_per_s"] / r["tokens_per_s"] for r, o in zip(runs["reference"], runs["ours"])]
    mems = [o["peak_rss_gb"] / r["peak_rss_gb"] for r, o in zip(runs["reference"], runs["ours"])]
    speed, mem = statistics.median(speeds), statistics.median(mems)
    ref, ours = runs["reference"][0], runs["ours"][0]
    med = {side: {key: statistics.median(r[key] for r in rs) for key in ("tokens_per_s", "step_s", "peak_rss_gb")}
           for side, rs in runs.items()}
    print(f"SmolLM2-135M shape, {args.samples} GSM8K samples ({ref['real_tokens']} real tokens), seq {args.seq_length}, "
          f"micro batch {args.micro_batch}, {args.threads} threads; ours: packing={'on' if args.packing else 'off'} "
          f"({ours['rows']} rows, {ours['padded_tokens']} tokens with padding to {args.pad_to}), "
          f"activation recompute={args.recompute}; {args.rounds} alternating fresh-process rounds, median")
    for side, label in (("reference", "reference HF full-vocab logits:"), ("ours", "nemo_erprm megatron PRM:       ")):
        m = med[side]
        print(f"{label} {m['tokens_per_s']:8.1f} tokens/s  step {m['step_s']:.2f}s  peak RSS {m['peak_rss_gb']:.2f} GB")
    print(f"tokens/s ratio: {speed:.2f}x (range {min(speeds):.2f}-{max(speeds):.2f}x, target >= 1.5x)   "
          f"peak memory ratio: {mem:.2f}x (range {min(mems):.2f}-{max(mems):.2f}x, target <= 0.6x)")
    ok = speed >= 1.5 and mem <= 0.6
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
