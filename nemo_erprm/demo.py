"""`make demo`: the ER-PRM pipeline on CPU with the embedded SmolLM2-135M-Instruct.

Each stage runs the same command a user runs (printed before it starts), with its config in
conf/demo/. Finished stages are reused: a stage's tool resumes from its output folder, so a
rerun only does what is missing. ``--fresh`` starts over.

Stages so far: 1. label (tools/label_rollouts.py). Training, conversion and evaluation join
as those stages land.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, cmd: list[str]) -> float:
    printable = " ".join(str(c) for c in cmd).replace(sys.executable, "python")
    print(f"\n=== stage {name}: {printable}", flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    seconds = time.time() - start
    print(f"=== stage {name} done in {seconds:.1f}s", flush=True)
    return seconds


def histogram_table(summary: dict) -> list[str]:
    lines = ["| eta | " + " | ".join(f"[{b / 10:.1f},{(b + 1) / 10:.1f})" for b in range(10)) + " |",
             "|---|" + "---|" * 10]
    names = {"0": "0 (soft MC mean)", "inf": "inf (hard max)"}
    for key, hist in summary["label_histogram"].items():
        lines.append(f"| {names.get(key, key)} | " + " | ".join(str(h) for h in hist) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="demo output folder")
    p.add_argument("--fresh", action="store_true", help="delete previous demo outputs first")
    p.add_argument("--label-config", default="conf/demo/label.yaml")
    p.add_argument("overrides", nargs="*", help="overrides for the label stage, e.g. input.limit=3")
    args = p.parse_args(argv)

    out = (REPO / args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    labels_dir = out / "labels"
    times: dict[str, float] = {}
    started = time.time()

    times["label"] = run_stage(
        "label",
        [sys.executable, "tools/label_rollouts.py", "--config", args.label_config,
         f"output.dir={labels_dir}", *args.overrides],
    )
    records = labels_dir / "records.shard-00000-of-00001.jsonl"
    summary = json.loads((labels_dir / "summary.shard-00000-of-00001.json").read_text())
    cfg = OmegaConf.load(REPO / args.label_config)

    report = out / "report.md"
    lines = [
        "# nemo-erprm demo report",
        "",
        "## 1. Labels",
        "",
        f"- Problems: {summary['problems']} GSM8K train problems (`{cfg.input.path}`), "
        f"{summary['records']} trajectories, {summary['steps']} steps "
        f"(mean {summary['mean_steps']:.2f} per solution).",
        "- Trajectories are the GSM8K reference solutions (a 135M model rarely solves GSM8K); "
        f"SmolLM2-135M-Instruct sampled N={cfg.sampling.n} completions from every step prefix "
        f"(temperature {cfg.sampling.temperature}, at most {cfg.sampling.max_new_tokens} new tokens), "
        "each graded against the gold answer; the last step is labeled with the solution's outcome.",
        f"- Records: `{records}`",
        "",
        "Label histogram per eta (number of steps per label bin):",
        "",
        *histogram_table(summary),
        "",
        "Stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()),
        "",
    ]
    report.write_text("\n".join(lines))
    print("\n" + "\n".join(histogram_table(summary)))
    print(f"\nrecords: {records}\nreport:  {report}\ntotal time: {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
