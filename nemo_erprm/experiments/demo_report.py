"""The demo's report: ``report.md``, ``results.json`` (every number with the artifact it comes
from) and three plots (label histogram per eta, training loss, Best-of-4 bars)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ETA_NAMES = {"0": "η→0 (soft MC mean)", "2": "η=2 (paper, Mistral data)", "10": "η=10 (paper, DeepSeek data)",
             "inf": "η→∞ (hard max)"}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bon_at(report: dict[str, Any], method: str, n: int) -> dict[str, float]:
    return next(p for p in report["best_of_n"][method] if p["n"] == n)


def collect_results(out: Path, records: Path, run_dir: Path, trained: Path, bon_dirs: dict[str, Path],
                    aggregation: str) -> dict[str, Any]:
    summary = json.loads((records.parent / "summary.shard-00000-of-00001.json").read_text())
    metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "split" not in r]
    bon = {name: json.loads((d / "report.json").read_text()) for name, d in bon_dirs.items()}
    n_max = max(p["n"] for p in bon["trained"]["best_of_n"]["random"])
    k = min(5, len(metrics))
    methods = {
        "random": ("untrained", "random"), "majority vote": ("untrained", "majority"),
        "oracle (pass@N)": ("untrained", "oracle"),
        f"untrained PRM ({aggregation})": ("untrained", f"prm_{aggregation}"),
        f"trained PRM ({aggregation})": ("trained", f"prm_{aggregation}"),
        f"trained PRM, weighted vote ({aggregation})": ("trained", f"weighted_{aggregation}"),
    }
    return {
        "labels": {"records": str(records), "summary": summary},
        "training": {
            "run_dir": str(run_dir), "checkpoint": str(trained), "steps": len(metrics),
            "loss_first": sum(r["loss"] for r in metrics[:k]) / k,
            "loss_last": sum(r["loss"] for r in metrics[-k:]) / k,
            "step_accuracy_last": sum(r["step_accuracy"] for r in metrics[-k:]) / k,
            "averaged_over_steps": k,
            **_train_settings(run_dir),
        },
        "best_of_n": {
            "n": n_max, "problems": bon["trained"]["data"]["problems"],
            "candidates_file": bon["trained"]["data"]["path"],
            "methods": {label: {"source": str(bon_dirs[src] / "report.json"), "method": m,
                                **{f"n{n}": bon_at(bon[src], m, n) for n in (1, n_max)}}
                        for label, (src, m) in methods.items()},
        },
    }


def _train_settings(run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return {"eta": cfg.data.eta, "global_batch_size": cfg.data.global_batch_size, "packing": cfg.data.packing,
            "lr": cfg.optim.lr}


def plot_labels(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = summary["label_histogram"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    width = 0.8 / len(hist)
    for i, (eta, counts) in enumerate(hist.items()):
        ax.bar([b + i * width for b in range(10)], counts, width=width, label=ETA_NAMES.get(eta, f"η={eta}"))
    ax.set_xticks([b + 0.4 - width / 2 for b in range(10)], [f"{b / 10:.1f}" for b in range(10)])
    ax.set_xlabel("ER label (bin start)")
    ax.set_ylabel("steps")
    ax.set_title("Step labels per η (same rollouts)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training(metrics: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [r["step"] for r in metrics]
    ax.plot(steps, [r["loss"] for r in metrics], marker=".", label="training loss (soft-target CE)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["step_accuracy"] for r in metrics], color="tab:green", alpha=0.6, label="step accuracy")
    ax2.set_ylabel("step accuracy")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper right")
    ax.set_title("PRM training (global batch of labeled steps)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bon(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = results["best_of_n"]["n"]
    methods = results["best_of_n"]["methods"]
    names = list(methods)
    acc = [methods[m][f"n{n}"]["accuracy"] for m in names]
    err = [[a - methods[m][f"n{n}"]["low"] for m, a in zip(names, acc)],
           [methods[m][f"n{n}"]["high"] - a for m, a in zip(names, acc)]]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    ax.bar(range(len(names)), acc, yerr=err, capsize=4, color=["#999", "#999", "#bbb", "#6a9fd4", "#1f5fa8", "#2e8b57"])
    ax.set_xticks(range(len(names)), [m.replace(" (", "\n(") for m in names], fontsize=7)
    ax.set_ylabel(f"accuracy, Best-of-{n}")
    ax.set_ylim(0, 1)
    ax.set_title(f"Best-of-{n} on {results['best_of_n']['problems']} GSM8K test problems (95% bootstrap interval)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_demo_report(out: Path, *, cfg: dict[str, Any], records: Path, run_dir: Path, trained: Path,
                      bon_dirs: dict[str, Path], times: dict[str, float], total_s: float) -> str:
    results = collect_results(out, records, run_dir, trained, bon_dirs, cfg["bon_aggregation"])
    results["config"], results["stage_seconds"] = cfg, times
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "split" not in r]
    plot_labels(results["labels"]["summary"], out / "labels.png")
    plot_training(metrics, out / "training_loss.png")
    plot_bon(results, out / "best_of_n.png")

    s, t, b = results["labels"]["summary"], results["training"], results["best_of_n"]
    n = b["n"]
    hist_rows = ["| η | " + " | ".join(f"{x / 10:.1f}" for x in range(10)) + " |", "|---|" + "---|" * 10]
    hist_rows += [f"| {ETA_NAMES.get(e, e)} | " + " | ".join(map(str, h)) + " |"
                  for e, h in s["label_histogram"].items()]
    bon_rows = ["| method | N=1 | N=" + str(n) + " |", "|---|---|---|"]
    for m, v in b["methods"].items():
        cells = [f"{v[f'n{k}']['accuracy']:.3f} [{v[f'n{k}']['low']:.3f}, {v[f'n{k}']['high']:.3f}]" for k in (1, n)]
        bon_rows.append(f"| {m} | " + " | ".join(cells) + " |")
    policy = "SmolLM2-135M-Instruct (GGUF, embedded)" if cfg["policy"] == "smollm2" else cfg["policy"]
    lines = [
        "# nemo-erprm demo report", "",
        "The ER-PRM pipeline end to end on CPU: label → convert → train → evaluate. Every number "
        "below is read from the artifacts named next to it (`results.json` lists them).", "",
        "## 1. Labels (`tools/label_rollouts.py --config conf/demo/label.yaml`)", "",
        f"- {s['problems']} GSM8K train problems, {s['records']} trajectories, {s['steps']} steps "
        f"(mean {s['mean_steps']:.2f} per solution); records: `{records}`.",
        f"- Trajectories are the **reference solutions' steps**: a 135M model rarely solves GSM8K, so its own "
        f"solutions would be almost all wrong. The policy, {policy}, samples the N per-step completions "
        "that are graded against the gold answer; the last step is labeled with the solution's outcome "
        "(always correct here, since the trajectory is the reference).",
        "- Labels for η → 0 (soft Monte-Carlo mean), η = 2 and 10 (the paper's), η → ∞ (hard: any "
        "completion correct) come from the same rollouts.", "",
        *hist_rows, "", "![labels](labels.png)", "",
        "## 2. Checkpoints (`tools/convert_hf_checkpoint.py`)", "",
        f"- `{out / 'prm_lm_tokens'}` (the paper's `+`/`-` head, used below) and `{out / 'prm_scalar'}`; "
        "the step tag `ки` is added to the tokenizer as a special token.", "",
        "## 3. Training (`python -m nemo_erprm.train --config conf/demo/train.yaml`)", "",
        f"- {t['steps']} steps (η={t['eta']:g} labels, global batch {t['global_batch_size']}, lr {t['lr']:g}, "
        f"{'packed rows' if t['packing'] else 'one sample per row'}); training loss {t['loss_first']:.4f} "
        f"(mean of the first {t['averaged_over_steps']} steps) → {t['loss_last']:.4f} (last "
        f"{t['averaged_over_steps']}), step accuracy {t['step_accuracy_last']:.3f}; metrics: "
        f"`{run_dir / 'metrics.jsonl'}`, checkpoint: `{trained}`.",
        f"- {t['steps']} steps on {s['problems']} problems show the machinery; they do not make a useful PRM.", "",
        "![training loss](training_loss.png)", "",
        f"## 4. Best-of-{n} (`tools/best_of_n.py`)", "",
        f"- The first {b['problems']} problems of `{cfg['bon_candidates']}` (copied to `{b['candidates_file']}`), "
        f"{n} candidates each, graded by our grader; accuracy with the 95% bootstrap interval over problems.", "",
        *bon_rows, "", "![Best-of-N](best_of_n.png)", "",
        "## Time", "",
        "- " + ", ".join(f"{k}: {v:.0f}s" for k, v in times.items()) + f"; total {total_s:.0f}s "
        "(0s: reused from an earlier run).", "",
        "Scaling each stage to 7B models on H100s: see README, section \"The demo, and the same at scale\".", "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    width = max(len(m) for m in b["methods"]) + 2
    console = [f"Best-of-{n} on {b['problems']} GSM8K test problems".ljust(width) + "N=1".rjust(8) + f"N={n}".rjust(8)]
    console += [m.ljust(width) + f"{v['n1']['accuracy']:8.3f}{v[f'n{n}']['accuracy']:8.3f}" for m, v in b["methods"].items()]
    console.append(f"training loss {t['loss_first']:.4f} -> {t['loss_last']:.4f} over {t['steps']} steps; "
                   f"total time {total_s:.0f}s")
    return "\n".join(console)
