#!/usr/bin/env python
"""Labeling generation throughput: the `hf` backend's windowed request plan vs naive generation.

Workload: the step-prefix requests of the first ``--problems`` GSM8K train problems (reference
solutions, as conf/demo/label.yaml), ``--n`` completions each, built by the request plan
(prompt token ids, per-completion seeds). Both sides generate exactly these completions with
the same model, prompts, seeds, sampler and ``max_new_tokens``:

- windowed: ``HFBackend.run`` on all requests of the window at once (rows sorted by prompt
  length, ``--batch-size`` rows per `generate`), what the labeling runner does;
- naive: one `generate` call per completion (one prompt at a time).

Rounds alternate naive/windowed (``--rounds``); the report is each side's median seconds, the
completions/s and the median of the per-round ratios. Outputs are compared too: a completion
depends on its seed, not its batch (rows that differ are counted; float rounding of the
batched forward can flip a near-tie).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_erprm.labeling.backends import BackendConfig, PromptConfig, SamplingConfig, build_backend  # noqa: E402
from nemo_erprm.labeling.backends.plan import Request, rollout_requests  # noqa: E402
from nemo_erprm.labeling.config import load_label_config  # noqa: E402
from nemo_erprm.labeling.problems import load_problems  # noqa: E402
from nemo_erprm.labeling.rollouts import problem_seed  # noqa: E402
from nemo_erprm.labeling.segmentation import split_steps  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_requests(backend, problems, cfg, n: int) -> list[Request]:
    requests = []
    for problem in problems:
        prompt = backend.format_prompt(problem.question)
        steps = split_steps(problem.solutions[0], cfg.segmentation)
        prefixes = ["".join(steps[: k + 1]) for k in range(len(steps) - 1)]
        ids = [backend.encode(prompt + p) for p in prefixes]
        requests += rollout_requests(ids, problem_seed(cfg.seed, problem.id), cfg.sampling.num_trajectories, n)
    return requests


def naive(backend, requests: list[Request]) -> list[list[str]]:
    return [[backend._generate_batch([r.prompt_ids], [seed])[0].text for seed in r.completion_seeds()]
            for r in requests]


def windowed(backend, requests: list[Request]) -> list[list[str]]:
    return [[c.text for c in completions] for completions in backend.run(requests)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="backend.model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--problems", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    cfg = load_label_config("conf/demo/label.yaml", [f"input.path={SHARED / 'gsm8k' / 'train.jsonl'}",
                                                     f"input.limit={args.problems}"])
    sampling = SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens, temperature=0.7)
    backend = build_backend(BackendConfig(model=args.model, batch_size=args.batch_size), sampling, PromptConfig())
    problems = load_problems(cfg.input, cfg.segmentation.step_tag)
    requests = build_requests(backend, problems, cfg, args.n)
    completions = sum(r.n for r in requests)
    windowed(backend, requests[:1])  # warm-up
    times: dict[str, list[float]] = {"naive": [], "windowed": []}
    outputs = {}
    for _ in range(args.rounds):
        for name, fn in (("naive", naive), ("windowed", windowed)):
            t0 = time.perf_counter()
            outputs[name] = fn(backend, requests)
            times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["naive"], times["windowed"])]
    differ = sum(a != b for ra, rb in zip(outputs["naive"], outputs["windowed"]) for a, b in zip(ra, rb))
    result = {
        "model": args.model, "problems": len(problems), "requests": len(requests), "completions": completions,
        "n": args.n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "rounds": args.rounds,
        "naive_s": statistics.median(times["naive"]), "windowed_s": statistics.median(times["windowed"]),
        "naive_completions_per_s": completions / statistics.median(times["naive"]),
        "windowed_completions_per_s": completions / statistics.median(times["windowed"]),
        "median_ratio": statistics.median(ratios), "completions_differing": differ,
    }
    for k, v in result.items():
        print(f"{k:>28}: {v:.3f}" if isinstance(v, float) else f"{k:>28}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
