#!/usr/bin/env python
"""Grading throughput: nemo_erprm.labeling.grade vs plain math-verify, same verdicts.

Workload: the 5,276 candidate solutions of ../shared/data/bon/gsm8k_test_4_model_solutions.jsonl
graded against their gold answers, plus the 500 MATH500 reference solutions graded against
their gold answers. Baseline: math-verify's parse + verify per completion (the full response
text parsed by math-verify's own extraction), no cache of ours, no numeric fast path.
Each pass runs in a fresh process, warmed up on the same unrelated input (sympy and the
LaTeX grammar load once per process), then times one cold pass (empty caches).
Prints both times, the speed ratio (target >= 20x) and any verdict disagreement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import math_verify  # noqa: E402

from nemo_erprm.labeling import extract_answer, grade  # noqa: E402
from nemo_erprm.labeling.grading import clear_cache  # noqa: E402

CANDIDATES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def load_items(data: Path) -> list[tuple[str, str, str]]:
    items = []
    with (data / "bon" / "gsm8k_test_4_model_solutions.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            gold = extract_answer(row["ground_truth"])
            items += [("gsm8k", row[k]["solution"], gold) for k in CANDIDATES]
    with (data / "math500" / "test.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            items.append(("math500", row["solution"], row["answer"]))
    return items


def baseline(response: str, gold: str) -> bool:
    return bool(math_verify.verify(math_verify.parse(f"\\boxed{{{gold}}}"), math_verify.parse(response)))


def time_side(side: str, data: Path) -> dict:
    """One cold pass of one side in this process (after the common warm-up)."""
    items = load_items(data)
    grade("\\boxed{\\frac{1}{2}x}", "x/2")  # warm-up on unrelated inputs: sympy and the
    baseline("so $x^2$", "x\\cdot x")        # LaTeX grammar load once per process
    clear_cache()
    fn = grade if side == "ours" else baseline
    t = time.perf_counter()
    verdicts = [fn(resp, gold) for _, resp, gold in items]
    return {"seconds": time.perf_counter() - t, "verdicts": verdicts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--repeats", type=int, default=3, help="fresh-process passes per side; the median counts")
    p.add_argument("--side", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    args = p.parse_args()
    data = Path(args.data)
    if args.side:  # child process: one timed pass, result as JSON on stdout
        print(json.dumps(time_side(args.side, data)))
        return 0

    items = load_items(data)
    runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
    for _ in range(args.repeats):
        for side in ("baseline", "ours"):
            out = subprocess.run(
                [sys.executable, __file__, "--side", side, "--data", str(data)],
                check=True, capture_output=True, text=True,
            )
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    t_ours = statistics.median(r["seconds"] for r in runs["ours"])
    t_base = statistics.median(r["seconds"] for r in runs["baseline"])
    ours, base = runs["ours"][0]["verdicts"], runs["baseline"][0]["verdicts"]
    disagreements = [
        (src, gold, resp[-70:].replace("\n", " "), o, b)
        for (src, resp, gold), o, b in zip(items, ours, base)
        if o != b
    ]
    n = len(items)
    print(f"items: {n} ({sum(1 for i in items if i[0] == 'gsm8k')} GSM8K candidates + "
          f"{sum(1 for i in items if i[0] == 'math500')} MATH500 solutions); "
          f"{args.repeats} fresh-process passes per side, median")
    print(f"nemo_erprm grade:          {t_ours:8.3f} s  {n / t_ours:10.0f} items/s")
    print(f"math-verify parse+verify:  {t_base:8.3f} s  {n / t_base:10.0f} items/s")
    print(f"same verdicts: {n - len(disagreements)}/{n}")
    for d in disagreements[:20]:
        print("  disagreement:", d)
    ratio = t_base / t_ours
    ok = ratio >= 20 and not disagreements
    print(f"speed ratio: {ratio:.1f}x (target >= 20x) -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
