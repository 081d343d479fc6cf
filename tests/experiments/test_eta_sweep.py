"""The η-sweep's reduced twin (conf/experiments/arith_ci.yaml) through the real command: every
stage runs its tool, the report agrees with every stage's artifacts (read here independently),
no test file feeds a choice, and a rerun reuses every stage."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.experiments.arith_task import first_wrong_step
from nemo_erprm.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _sweep(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_erprm.experiments.eta_sweep", "--config",
                           "conf/experiments/arith_ci.yaml", "--out", str(out), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)


def _pick_accuracy(cands: list[dict], agg: str) -> float:
    """Accuracy of picking the best-scored candidate among all of them (ties: their mean)."""
    best = max(c["aggregated"][agg] for c in cands)
    tied = [c for c in cands if abs(c["aggregated"][agg] - best) <= 1e-12]
    return sum(bool(c["correct"]) for c in tied) / len(tied)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    proc = _sweep(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_report_agrees_with_every_stage(sweep):
    out, proc = sweep
    report = json.loads((out / "report.json").read_text())
    seed = report["seeds"]["1"]
    d = out / "seed1"
    n = report["config"]["eval"]["n"]
    agg = report["config"]["eval"]["aggregation"]

    # task and records: the hashes in the report are the files'
    manifest = json.loads((d / "task" / "manifest.json").read_text())
    assert seed["task_manifest"] == manifest
    # the policy's pass@1 on test = the fraction of correct test candidates (random pick at N=1)
    scored_untrained = read_jsonl(d / "bon" / "test" / "untrained" / "candidates_scored.jsonl")
    cands = [c for p in scored_untrained for c in p["candidates"]]
    assert seed["test_pass_at_1"] == pytest.approx(sum(c["correct"] for c in cands) / len(cands))

    # Best-of-N: every trained PRM's curve is its own tool report's, and the full-N point is the
    # best-scored candidate's correctness, recomputed here from the scored candidates
    for name in ("eta0", "eta2", "etainf"):
        tool = json.loads((d / "bon" / "test" / name / "report.json").read_text())
        assert seed["best_of_n"][name] == tool["best_of_n"][f"prm_{agg}"]
        scored = read_jsonl(d / "bon" / "test" / name / "candidates_scored.jsonl")
        full = [p for p in scored if len(p["candidates"]) == n]
        expected = sum(_pick_accuracy(p["candidates"], agg) for p in full) / len(full)
        assert seed["best_of_n"][name][-1]["n"] == n
        assert seed["best_of_n"][name][-1]["accuracy"] == pytest.approx(expected, abs=1e-9)
        assert seed["first_error"][name]["threshold_chosen_on"] == "threshold split"

    # within-problem step discrimination is reported for every PRM, the untrained one included
    assert set(seed["divergence_step_auc"]) == {"untrained", "eta0", "eta2", "etainf"}
    assert all(0.0 <= v["auc"] <= 1.0 for v in seed["divergence_step_auc"].values() if v["pairs"])

    # label quality: η=inf labels against the exact checker, recomputed here
    problems = {p["id"]: p for p in read_jsonl(d / "task" / "prm_train.jsonl")}
    policy_ids = {p["id"] for p in read_jsonl(d / "task" / "policy_train.jsonl")}
    assert not policy_ids & set(problems)  # the policy never trained on a problem it is rolled out on
    records = read_jsonl(d / "labels" / "records.shard-00000-of-00001.jsonl")
    agree = total = 0
    for r in records:
        first = first_wrong_step(problems[r["problem_id"]], [s.strip() for s in r["steps"]])
        for i, label in enumerate(r["labels"]["inf"]):
            agree += (label >= 0.5) == (first == -1 or i < first)
            total += 1
    assert seed["label_quality"]["steps"] == total
    assert seed["label_quality"]["per_label"]["inf"]["agreement"] == pytest.approx(agree / total)

    # paired differences are differences of the two curves' means
    for pair, by_n in seed["paired_differences"].items():
        a, b = pair.split("-")
        for point_a, point_b in zip(seed["best_of_n"][a], seed["best_of_n"][b]):
            assert by_n[str(point_a["n"])]["diff"] == pytest.approx(point_a["accuracy"] - point_b["accuracy"], abs=1e-9)

    # choices on validation only; every stage timed; the markdown shows the same numbers
    assert report["selection"]["split"] == "val" and report["selection"]["best_label_set"] in ("eta0", "eta2", "etainf")
    assert all(report["stage_seconds"][s] is not None for s in report["stage_seconds"])
    md = (out / "report.md").read_text()
    assert f"{seed['best_of_n']['eta2'][0]['accuracy']:.3f}" in md
    assert (out / "best_of_n_seed1.png").stat().st_size > 1000 and (out / "labels_seed1.png").stat().st_size > 1000


def test_rerun_reuses_every_stage(sweep):
    out, first = sweep
    before = (out / "report.json").read_text()
    proc = _sweep(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = [line for line in proc.stdout.splitlines() if line.startswith("=== ") and " done in " in line]
    reused = [line for line in proc.stdout.splitlines() if "reusing finished outputs" in line]
    assert ran == [] and len(reused) >= 10
    after = json.loads((out / "report.json").read_text())
    assert after["seeds"] == json.loads(before)["seeds"]
