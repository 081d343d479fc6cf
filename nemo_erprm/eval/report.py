"""Evaluation outputs: ``report.json`` (every number, the config, model and data hashes),
``report.md`` (tables) and ``best_of_n.png`` (accuracy vs N, one line per method)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from nemo_erprm.eval.best_of_n import CurvePoint


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def curves_json(curves: dict[str, list[CurvePoint]]) -> dict[str, list[dict[str, float]]]:
    return {m: [asdict(p) for p in pts] for m, pts in curves.items()}


def markdown_report(report: dict[str, Any]) -> str:
    lines = [f"# Best-of-N evaluation: {report['data']['path']}", ""]
    d = report["data"]
    lines += [f"- problems: {d['problems']}, candidates: {d['candidates']} (layout `{d['layout']}`), "
              f"graded by our grader: {d['graded']}, disagreements with the file's labels: {d['label_disagreements']}",
              f"- scorer: `{report['scorer']['path'] if report['scorer'] else 'none'}`", ""]
    curves = report["best_of_n"]
    ns = [p["n"] for p in next(iter(curves.values()))]
    lines += ["| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    first = next(iter(curves.values()))
    lines.append("| problems counted | " + " | ".join(str(p.get("problems", "")) for p in first) + " |")
    for m, pts in curves.items():
        cells = [f"{p['accuracy']:.3f} [{p['low']:.3f}, {p['high']:.3f}]" for p in pts]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy, with the 95% bootstrap interval over problems in brackets; each N averages over "
              "the problems with at least N candidates."]
    if report.get("processbench"):
        pb = report["processbench"]
        c = pb["chosen"]
        fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
        lines += ["", "## Step-level (ProcessBench format)", "",
                  f"threshold {c['threshold']} (chosen on the {pb['threshold_chosen_on']}): accuracy on erroneous "
                  f"samples {fmt(c['erroneous_accuracy'])} ({c['num_erroneous']}), on correct samples "
                  f"{fmt(c['correct_accuracy'])} ({c['num_correct']}), F1 {fmt(c['f1'])}"]
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[CurvePoint]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for m, pts in curves.items():
        xs = [p.n for p in pts]
        style = "--" if m in ("random", "oracle") else "-"
        ax.plot(xs, [p.accuracy for p in pts], style, marker="o", label=m)
        ax.fill_between(xs, [p.low for p in pts], [p.high for p in pts], alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks([p.n for p in next(iter(curves.values()))])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(out_dir: Path, report: dict[str, Any], curves: dict[str, list[CurvePoint]],
                 title: Optional[str] = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "plot": out_dir / "best_of_n.png"}
    _write_atomic(paths["json"], json.dumps(report, indent=2) + "\n")
    _write_atomic(paths["markdown"], markdown_report(report))
    plot_curves(curves, paths["plot"], title or f"Best-of-N: {Path(report['data']['path']).name}")
    return paths
