"""`make demo`: the ER-PRM pipeline on CPU with the embedded SmolLM2-135M-Instruct.

Each stage runs the same command a user runs (printed before it starts), with its config in
conf/demo/. Finished stages are reused: a stage's tool resumes from its output folder, so a
rerun only does what is missing. ``--fresh`` starts over.

Stages so far: 1. label (tools/label_rollouts.py), 2. convert SmolLM2 into the PRM checkpoint
(tools/convert_hf_checkpoint.py, both heads). Training and evaluation join as they land.
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
    # Stage 2: SmolLM2 -> megatron ERPRM checkpoints. "ки" is not one SmolLM2 token: it is added
    # as a special token (one new embedding row), exactly as a user would for this model.
    ckpts = {}
    for head in ("lm_tokens", "scalar"):
        ckpt = out / f"prm_smollm2_{head}"
        if (ckpt / "prm_config.json").exists():
            print(f"\n=== stage convert ({head}): reusing {ckpt}")
            times[f"convert_{head}"] = 0.0
        else:
            if ckpt.exists():
                shutil.rmtree(ckpt)  # an interrupted earlier run: start this stage over
            times[f"convert_{head}"] = run_stage(
                f"convert ({head})",
                [sys.executable, "tools/convert_hf_checkpoint.py", "--hf-dir", "smollm2", "--out", str(ckpt),
                 "--head", head, "--add-step-tag-token"],
            )
        ckpts[head] = json.loads((ckpt / "prm_config.json").read_text())
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
        "## 2. PRM checkpoints",
        "",
        *[f"- `{head}` head: `{out / f'prm_smollm2_{head}'}` (step tag {m['step_tag']!r} = token id "
          f"{m['step_tag_id']}, added as a special token: {m['step_tag_added']}"
          + (f"; '+' = {m['plus_token_id']}, '-' = {m['minus_token_id']})" if head == 'lm_tokens' else ")")
          for head, m in ckpts.items()],
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
