"""`make demo`: the whole ER-PRM pipeline on CPU with the embedded SmolLM2-135M-Instruct.

    python -m nemo_erprm.experiments.demo [--fresh] [--out outputs/demo] [key=value ...]   # keys: conf/demo/demo.yaml

1. label    tools/label_rollouts.py --config conf/demo/label.yaml: ER labels (eta 0, 2, 10, inf
            from the same rollouts) for the first GSM8K train problems; the reference
            solutions' steps are the trajectories, SmolLM2 samples the per-step completions.
2. convert  tools/convert_hf_checkpoint.py: SmolLM2 -> megatron PRM checkpoints (both heads;
            the demo trains the paper's lm_tokens head).
3. train    python -m nemo_erprm.train --config conf/demo/train.yaml: a few dozen NeMo steps on
            the CPU backend.
4. evaluate tools/best_of_n.py: Best-of-4 on the first GSM8K test problems of the shared set,
            the trained PRM vs the untrained one, random, majority vote and oracle.
5. report   outputs/demo/report.md with PNG plots; a short table on the console.

Each stage runs the command a user runs (printed first, with a time estimate). A finished
stage is reused while its settings are unchanged (``.stages/<stage>.json`` in the output
folder records them); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

from omegaconf import OmegaConf

from nemo_erprm.experiments.stages import REPO, Stages, file_digest
from nemo_erprm.training.checkpoints import last_checkpoint

DEMO_CONF = REPO / "conf" / "demo"
# Measured on 2 CPU cores with SmolLM2-135M (estimates printed before each stage)
SECONDS_PER = {"label_problem": 27.0, "convert": 65.0, "train_step": 6.0, "train_start": 35.0,
               "scored_candidate": 0.3, "eval_start": 25.0, "export": 25.0}


@dataclass
class DemoConfig:
    policy: str = "smollm2"
    backbone: str = "smollm2"
    label_problems: int = 8
    train_steps: int = 24
    bon_candidates: str = "../shared/data/bon/gsm8k_test_4_model_solutions.jsonl"
    bon_problems: int = 30
    bon_aggregation: str = "min"


def load_demo_config(overrides: list[str]) -> DemoConfig:
    merged = OmegaConf.merge(OmegaConf.structured(DemoConfig), OmegaConf.load(DEMO_CONF / "demo.yaml"),
                             OmegaConf.from_dotlist(overrides))
    return OmegaConf.to_object(merged)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="demo output folder")
    p.add_argument("--fresh", action="store_true", help="delete previous demo outputs first")
    p.add_argument("overrides", nargs="*", help="key=value for conf/demo/demo.yaml, e.g. bon_problems=20")
    args = p.parse_args(argv)
    cfg = load_demo_config(args.overrides)

    out = (REPO / args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    embedded = cfg.policy == "smollm2" and cfg.backbone == "smollm2"
    stages = Stages(out, show_estimates=embedded)
    started = time.time()
    py = sys.executable

    # 1. label
    labels = out / "labels"
    stages.run("1. label", {"policy": cfg.policy, "problems": cfg.label_problems,
                            "config": file_digest(DEMO_CONF / "label.yaml")},
               [py, "tools/label_rollouts.py", "--config", "conf/demo/label.yaml", f"output.dir={labels}",
                f"input.limit={cfg.label_problems}", f"backend.model={cfg.policy}"],
               labels, cfg.label_problems * SECONDS_PER["label_problem"],
               produced=lambda: (labels / "summary.shard-00000-of-00001.json").exists())
    records = labels / "records.shard-00000-of-00001.jsonl"

    # 2. convert ("ки" is not one SmolLM2 token: it becomes a special token, one new embedding row)
    ckpts = {}
    for head in ("lm_tokens", "scalar"):
        ckpts[head] = out / f"prm_{head}"
        stages.run(f"2. convert ({head})", {"backbone": cfg.backbone, "head": head},
                   [py, "tools/convert_hf_checkpoint.py", "--hf-dir", cfg.backbone, "--out", str(ckpts[head]),
                    "--head", head, "--add-step-tag-token"],
                   ckpts[head], SECONDS_PER["convert"], produced=lambda h=head: (ckpts[h] / "prm_config.json").exists())

    # 3. train
    train_root = out / "train"
    stages.run("3. train", {"records": file_digest(records), "backbone": cfg.backbone, "steps": cfg.train_steps,
                            "config": file_digest(DEMO_CONF / "train.yaml")},
               [py, "-m", "nemo_erprm.train", "--config", "conf/demo/train.yaml", f"run.output_dir={train_root}",
                f"model.init_from={ckpts['lm_tokens']}", f"data.train={records}",
                f"trainer.max_steps={cfg.train_steps}"],
               train_root, SECONDS_PER["train_start"] + cfg.train_steps * SECONDS_PER["train_step"] + SECONDS_PER["export"],
               produced=lambda: last_checkpoint(train_root / "smollm2_prm") is not None
               and (train_root / "smollm2_prm" / "hf" / "prm_config.json").is_file())
    run_dir = train_root / "smollm2_prm"
    trained = last_checkpoint(run_dir)  # checked by the stage's `produced`

    # 4. evaluate: the first problems of the Best-of-4 test set (a retrained PRM is evaluated again)
    from nemo_erprm.eval.scorers import directory_fingerprint

    source = (REPO / cfg.bon_candidates).resolve()
    bon_slice = out / "bon_candidates.jsonl"
    lines = source.read_text().splitlines()[: cfg.bon_problems]
    if not bon_slice.exists() or bon_slice.read_text() != "\n".join(lines) + "\n":
        bon_slice.write_text("\n".join(lines) + "\n")
    bon_dirs = {"untrained": out / "bon_untrained", "trained": out / "bon_trained"}
    scorers = {"untrained": ckpts["lm_tokens"], "trained": trained}
    for name, scorer in scorers.items():
        stages.run(f"4. evaluate ({name} PRM)",
                   {"scorer": str(scorer), "weights": directory_fingerprint(scorer / "weights", "megatron"),
                    "candidates": file_digest(bon_slice), "aggregation": cfg.bon_aggregation},
                   [py, "tools/best_of_n.py", "--candidates", str(bon_slice), "--scorer", str(scorer),
                    "--out", str(bon_dirs[name]), "--aggregation", cfg.bon_aggregation],
                   bon_dirs[name], SECONDS_PER["eval_start"] + 4 * cfg.bon_problems * SECONDS_PER["scored_candidate"],
                   produced=lambda n=name: (bon_dirs[n] / "report.json").exists())

    # 5. report
    from nemo_erprm.experiments.demo_report import write_demo_report

    summary = write_demo_report(out, cfg=asdict(cfg), records=records, run_dir=run_dir, trained=trained,
                                bon_dirs=bon_dirs, times=stages.times, total_s=time.time() - started)
    print("\n" + summary)
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
