"""The η-sweep's report: every number is read from the stages' artifacts (Best-of-N reports,
scored candidates, labeled records, the task's files) and recomputed where a paired
comparison needs per-problem values; a recomputed curve that disagrees with the Best-of-N
tool's own report is an error, not a footnote.

Writes ``report.md``, ``report.json``, ``best_of_n_seed<S>.png`` and ``labels_seed<S>.png``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nemo_erprm.eval.best_of_n import n_values, subset_accuracy, subsets_of
from nemo_erprm.eval.candidates import BoNProblem, Candidate
from nemo_erprm.jsonl import iter_jsonl

HIST_BINS = 10


class ReportMismatch(RuntimeError):
    """A recomputed figure disagrees with the artifact it is read from."""


# ---- Best-of-N, per problem ----------------------------------------------------------------

def load_scored(path: Path) -> tuple[list[BoNProblem], list[dict[str, list[float]]]]:
    problems, scores = [], []
    for _, rec in iter_jsonl(path):
        cands = [Candidate(text="", steps=[], source=c.get("source", ""), answer=c["answer"], correct=c["correct"])
                 for c in rec["candidates"]]
        problems.append(BoNProblem(rec["id"], "", rec.get("gold"), cands))
        aggs = rec["candidates"][0].get("aggregated", {}) if rec["candidates"] else {}
        scores.append({a: [c["aggregated"][a] for c in rec["candidates"]] for a in aggs})
    return problems, scores


def per_problem(problems: Sequence[BoNProblem], scores: Sequence[dict[str, list[float]]], method: str, n: int,
                subsets: int, seed: int) -> list[float]:
    """Per-problem accuracy of ``method`` at N, on the same subsets as tools/best_of_n.py draws
    (same seed → same subsets for every PRM, so differences are paired)."""
    rng = random.Random(f"{seed}:{n}")
    counted = [j for j, p in enumerate(problems) if len(p.candidates) >= n]
    chosen = {j: subsets_of(len(problems[j].candidates), n, subsets, rng) for j in counted}
    return [sum(subset_accuracy(method, problems[j], idx, scores[j]) for idx in chosen[j]) / len(chosen[j])
            for j in counted]


def bootstrap_mean(values: Sequence[float], samples: int, seed: int) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(samples, len(v)))
    means = v[idx].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_diff(a: Sequence[float], b: Sequence[float], samples: int, seed: int) -> dict[str, float]:
    mean, low, high = bootstrap_mean([x - y for x, y in zip(a, b)], samples, seed)
    return {"diff": mean, "low": low, "high": high, "excludes_zero": bool(low > 0 or high < 0)}


# ---- labels against the exact step truth -----------------------------------------------------

def label_quality(records: Path, problems_file: Path, label_keys: Sequence[str]) -> dict[str, Any]:
    """Each label type against exact prefix correctness (step i is good iff no step up to i is
    wrong): agreement of label >= 0.5 with the truth, mean label on good and bad steps, histogram."""
    from nemo_erprm.experiments.arith_task import first_wrong_step

    problems = {p["id"]: p for _, p in iter_jsonl(problems_file)}
    truth: list[bool] = []
    labels: dict[str, list[float]] = {k: [] for k in label_keys}
    solutions = correct_solutions = 0
    for _, r in iter_jsonl(records):
        steps = [s.strip() for s in r["steps"]]
        first = first_wrong_step(problems[r["problem_id"]], steps)
        solutions += 1
        correct_solutions += first == -1
        truth += [first == -1 or i < first for i in range(len(steps))]
        for k in label_keys:
            labels[k] += r["labels"][k]
    t = np.asarray(truth)
    out: dict[str, Any] = {"steps": len(truth), "good_steps": int(t.sum()), "solutions": solutions,
                           "exactly_correct_solutions": correct_solutions, "per_label": {}}
    for k, vals in labels.items():
        v = np.asarray(vals)
        hist, _ = np.histogram(v, bins=HIST_BINS, range=(0.0, 1.0))
        out["per_label"][k] = {
            "agreement": float(((v >= 0.5) == t).mean()),
            "mean_on_good": float(v[t].mean()) if t.any() else None,
            "mean_on_bad": float(v[~t].mean()) if (~t).any() else None,
            "histogram": hist.tolist(),
        }
    return out


# ---- the report ------------------------------------------------------------------------------

def candidate_steps(candidates: Path) -> dict[str, list[list[str]]]:
    """Problem id → each candidate's steps, segmented as Best-of-N segments them."""
    from nemo_erprm.labeling.segmentation import SegmentationConfig, split_steps

    seg = SegmentationConfig()
    return {rec["id"]: [[x.strip() for x in split_steps(text, seg)] for text in rec["candidates"]]
            for _, rec in iter_jsonl(candidates)}


def divergence_auc(steps: dict[str, list[list[str]]], scored: Path) -> dict[str, Any]:
    """Within-problem step discrimination, the skill Best-of-N needs: for every pair (correct,
    wrong) of candidates of one problem, the step where their texts first differ is scored by
    the PRM in both; the AUC is P(score of the correct one's step > the wrong one's), ties ½.
    A PRM that only learned how hard a problem is scores 0.5 here, however well its scores
    separate problems. ``steps``: :func:`candidate_steps` of the candidates ``scored`` scored."""
    return divergence_auc_records(steps, (rec for _, rec in iter_jsonl(scored)))


def divergence_auc_records(steps: dict[str, list[list[str]]], records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """:func:`divergence_auc` of scored records (``id``; ``candidates`` with ``source``,
    ``correct`` and ``step_scores``) already in memory."""
    wins = pairs = 0.0
    for rec in records:
        texts = steps[rec["id"]]
        right = [c for c in rec["candidates"] if c["correct"]]
        wrong = [c for c in rec["candidates"] if not c["correct"]]
        for a in right:
            for b in wrong:
                sa, sb = texts[int(a["source"])], texts[int(b["source"])]
                k = next((i for i, (x, y) in enumerate(zip(sa, sb)) if x != y), None)
                if k is None or k >= min(len(a["step_scores"]), len(b["step_scores"])):
                    continue
                x, y = a["step_scores"][k], b["step_scores"][k]
                wins += 1.0 if x > y else 0.5 if x == y else 0.0
                pairs += 1
    return {"auc": wins / pairs if pairs else float("nan"), "pairs": int(pairs)}


def _fmt_ci(x: dict[str, float]) -> str:
    return f"{x['accuracy']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def _plot_curves(path: Path, curves: dict[str, list[dict]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.tab20.colors  # 12+ curves: the default cycle of 10 would repeat colours
    for i, (name, pts) in enumerate(curves.items()):
        ns = [p["n"] for p in pts]
        style = "--" if name in ("random", "majority", "oracle", "untrained") else "-"
        ax.plot(ns, [p["accuracy"] for p in pts], style, marker="o", label=name, color=colors[i % len(colors)])
        if style == "-":
            ax.fill_between(ns, [p["low"] for p in pts], [p["high"] for p in pts], alpha=0.08)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N candidates")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_labels(path: Path, quality: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(quality["per_label"])
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 * len(keys), 2.6), sharey=True)
    edges = np.linspace(0, 1, HIST_BINS + 1)
    for ax, k in zip(np.atleast_1d(axes), keys):
        ax.bar(edges[:-1], quality["per_label"][k]["histogram"], width=1 / HIST_BINS, align="edge")
        ax.set_title(f"η={k}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_sweep_report(root: Path, cfg: Any, selection: dict[str, Any], results: dict[str, Any], stages: Any,
                       total_s: float) -> str:
    from nemo_erprm.experiments.stages import file_digest

    e = cfg.eval
    agg = e.aggregation
    sets = list(cfg.label_sets())
    eta_names = [s for s in sets if s.startswith("eta")]
    soft, hard = "eta0", "etainf"
    er_sets = [s for s in eta_names if s not in (soft, hard)]
    ns = n_values(e.n)
    report: dict[str, Any] = {"config": json.loads(json.dumps(_plain(cfg))), "selection": selection, "seeds": {}}
    md = ["# η-sweep: soft, ER and hard labels on an arithmetic task with exact step truth", ""]
    md += [f"Config `{cfg.name}`; seeds {cfg.seeds}; headline aggregation `{agg}`; every interval is a 95% "
           f"bootstrap over test problems ({e.bootstrap} resamples); differences are paired (same problems, same "
           "candidate subsets).", ""]
    md += ["**Splits.** Train problems: policy training and PRM labels. Validation problems: the (lr, epochs) "
           f"choice and the best label set (on seed {selection.get('seed')}, Best-of-{e.select_n} with `{agg}`), "
           "and the first-error threshold. Test problems: only the numbers below.", ""]
    summary_lines = []
    for seed, res in results["seeds"].items():
        d = Path(res["dir"])
        manifest = json.loads((d / "task" / "manifest.json").read_text())
        policy = json.loads((d / "policy" / "policy_summary.json").read_text())
        label_summary = json.loads((d / "labels" / "summary.shard-00000-of-00001.json").read_text())
        records = d / "labels" / "records.shard-00000-of-00001.jsonl"
        from nemo_erprm.labeling.er_label import eta_key

        keys = [eta_key(x) for x in cfg.etas]
        quality = label_quality(records, d / "task" / "prm_train.jsonl", keys)
        _plot_labels(root / f"labels_seed{seed}.png", quality)

        # Best-of-N: the tool's curves, recomputed per problem for the paired differences
        methods = {"random": ("untrained", "random"), "majority": ("untrained", "majority"),
                   "oracle": ("untrained", "oracle"), "untrained": ("untrained", f"prm_{agg}")}
        methods.update({s: (s, f"prm_{agg}") for s in sets})
        dirs = {"untrained": Path(res["untrained"]), **{s: Path(p) for s, p in res["trained"].items()}}
        loaded = {name: load_scored(path / "candidates_scored.jsonl") for name, path in dirs.items()}
        curves: dict[str, list[dict]] = {}
        per: dict[str, dict[int, list[float]]] = {}
        for label, (src, method) in methods.items():
            tool = json.loads((dirs[src] / "report.json").read_text())["best_of_n"][method]
            curves[label] = tool
            problems, scores = loaded[src]
            per[label] = {}
            for point in tool:
                values = per_problem(problems, scores, method, point["n"], e.subsets, int(seed))
                per[label][point["n"]] = values
                if abs(sum(values) / len(values) - point["accuracy"]) > 1e-9:
                    raise ReportMismatch(f"{dirs[src]}: {method} at N={point['n']}: report.json says "
                                         f"{point['accuracy']}, recomputed {sum(values) / len(values)}")
        _plot_curves(root / f"best_of_n_seed{seed}.png", curves, f"Best-of-N on test problems (seed {seed}, {agg})")

        diffs: dict[str, dict[str, dict[int, dict]]] = {}
        for er in er_sets:
            for base in (soft, hard):
                if base in per:
                    diffs.setdefault(f"{er}-{base}", {})
                    diffs[f"{er}-{base}"] = {n: paired_diff(per[er][n], per[base][n], e.bootstrap, int(seed) * 100 + n)
                                             for n in per[er]}
        best = selection["best_label_set"]
        acceptance = {base: paired_diff(per[best][e.select_n], per[base][e.select_n], e.bootstrap, int(seed))
                      for base in ("majority", "random", "untrained")}
        first_error = {}
        for name, path in dirs.items():
            pb = json.loads((path / "report.json").read_text()).get("processbench")
            if pb:
                first_error[name] = {**pb["chosen"], "threshold_chosen_on": pb["threshold_chosen_on"]}
        test_steps = candidate_steps(d / "candidates" / "test" / "candidates.jsonl")
        divergence = {name: divergence_auc(test_steps, path / "candidates_scored.jsonl") for name, path in dirs.items()}
        pass1 = curves["random"][0]["accuracy"]
        report["seeds"][str(seed)] = {
            "task_manifest": manifest, "policy": policy, "labeling": label_summary, "label_quality": quality,
            "best_of_n": curves, "paired_differences": diffs, "acceptance": {"label_set": best, "n": e.select_n,
                                                                          "vs": acceptance},
            "first_error": first_error, "divergence_step_auc": divergence, "test_pass_at_1": pass1,
            "data_sha256": {k: manifest.get("sha256", {}).get(k) for k in ("train", "val", "test")},
            "records_sha256_16": file_digest(records),
        }

        md += [f"## Seed {seed}", ""]
        backbone_file = d / "backbone" / "policy_summary.json"
        if backbone_file.exists():
            backbone = json.loads(backbone_file.read_text())
            report["seeds"][str(seed)]["backbone"] = backbone
        md += [f"- Task: {manifest.get('counts')} problems, files' sha256 in `report.json`.",
               f"- Policy: {policy.get('params', '?')} parameters, trained {policy.get('steps', '?')} steps in "
               f"{policy.get('train_time_s', 0):.0f}s; pass@1 on validation "
               f"{_first_number(policy, ('pass_at_1', 'pass@1'))}; on the test candidates {pass1:.3f}.",
               *([f"- PRM backbone (not the policy): {backbone.get('params', '?')} parameters, trained "
                  f"{backbone.get('steps', '?')} steps on the policy's problems; its own pass@1 on validation "
                  f"{_first_number(backbone, ('pass_at_1', 'pass@1'))}."] if backbone_file.exists() else []),
               f"- Labels: {quality['solutions']} policy solutions of train problems "
               f"({quality['exactly_correct_solutions']} exactly right), {quality['steps']} steps "
               f"({quality['good_steps']} good by the exact checker).", ""]
        md += ["| label | agreement with exact truth | mean label on good steps | on bad steps |", "|---|---|---|---|"]
        for k, q in quality["per_label"].items():
            md.append(f"| η={k} | {q['agreement']:.3f} | {_f(q['mean_on_good'])} | {_f(q['mean_on_bad'])} |")
        md += ["", f"![labels](labels_seed{seed}.png)", "",
               f"Best-of-N accuracy on {curves['random'][0]['problems']} test problems (`prm_{agg}`):", ""]
        md += ["| method | " + " | ".join(f"N={p['n']}" for p in curves["random"]) + " |",
               "|---|" + "---|" * len(curves["random"])]
        for label, pts in curves.items():
            md.append(f"| {label} | " + " | ".join(_fmt_ci(p) for p in pts) + " |")
        md += ["", f"![Best-of-N](best_of_n_seed{seed}.png)", ""]
        if diffs:
            md += ["Paired differences (ER − soft, ER − hard), mean [95% CI]; * = interval excludes 0:", "",
                   "| pair | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
            for pair, by_n in diffs.items():
                md.append(f"| {pair} | " + " | ".join(
                    f"{by_n[n]['diff']:+.3f} [{by_n[n]['low']:+.3f}, {by_n[n]['high']:+.3f}]"
                    f"{'*' if by_n[n]['excludes_zero'] else ''}" if n in by_n else "" for n in ns) + " |")
            md.append("")
        md += [f"Best label set chosen on validation: **{best}**; at N={e.select_n} on test:", ""]
        for base, d_ in acceptance.items():
            md.append(f"- {best} − {base}: {d_['diff']:+.3f} [{d_['low']:+.3f}, {d_['high']:+.3f}]"
                      f"{' (excludes 0)' if d_['excludes_zero'] else ' (includes 0)'}")
        md += ["", "First-error F1 (ProcessBench-style, exact first wrong step; threshold chosen on validation), "
               "and the divergence-step AUC (within a problem: P(the PRM scores a correct candidate's step above a "
               "wrong candidate's, at the first step where their texts differ); 0.5 = no step checking):", "",
               "| PRM | F1 | acc. on erroneous | acc. on correct | threshold | divergence-step AUC (pairs) |",
               "|---|---|---|---|---|---|"]
        for name in dirs:
            fe, dv = first_error.get(name, {}), divergence[name]
            md.append(f"| {name} | {_f(fe.get('f1'))} | {_f(fe.get('erroneous_accuracy'))} | "
                      f"{_f(fe.get('correct_accuracy'))} | {fe.get('threshold', '–')} | {_f(dv['auc'])} ({dv['pairs']}) |")
        md.append("")
        a = acceptance["majority"]
        summary_lines.append(f"seed {seed}: pass@1 {pass1:.3f}; Best-of-{e.select_n}: {best} "
                             f"{per[best][e.select_n] and sum(per[best][e.select_n]) / len(per[best][e.select_n]):.3f}"
                             f" vs majority {sum(per['majority'][e.select_n]) / len(per['majority'][e.select_n]):.3f}"
                             f" (diff {a['diff']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}])")
    times = {name: (sec if sec else stages.recorded_seconds(name)) for name, sec in stages.times.items()}
    report["stage_seconds"] = times
    report["reused_stages"] = stages.reused
    report["total_seconds_this_run"] = total_s
    md += ["## Time per stage (2 CPU cores; reused stages show the time of the run that made them)", "",
           "| stage | seconds |", "|---|---|"]
    md += [f"| {name} | {sec:.0f} |" if sec is not None else f"| {name} | ? |" for name, sec in times.items()]
    md += ["", f"Sum of stage times: {sum(s for s in times.values() if s):.0f}s; this run: {total_s:.0f}s.", ""]
    (root / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (root / "report.md").write_text("\n".join(md))
    return "\n".join(summary_lines)


def _first_number(d: dict, keys: Sequence[str]) -> str:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)):
            return f"{v:.3f}"
        if isinstance(v, dict):
            for x in v.values():
                if isinstance(x, (int, float)):
                    return f"{x:.3f}"
    return "?"


def _f(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _plain(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj
