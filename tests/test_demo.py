"""A reduced `make demo` (tiny Llama as policy and backbone, 4 problems, 6 steps, Best-of-4 on
4 problems): every stage runs through the user-facing tools, the report's numbers are the
ones in the saved artifacts, and a rerun reuses every finished stage."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_llama

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_reduced_demo_end_to_end_and_reproducible_report(shared_data, tmp_path):
    tiny = build_tiny_llama(tmp_path / "tiny_llama")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "nemo_erprm.experiments.demo", "--out", str(out), f"policy={tiny}", f"backbone={tiny}",
           "label_problems=4", "train_steps=6", "bon_problems=4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"report: {out / 'report.md'}" in proc.stdout
    for stage in ("tools/label_rollouts.py", "tools/convert_hf_checkpoint.py", "-m nemo_erprm.train",
                  "tools/best_of_n.py"):
        assert stage in proc.stdout  # the demo calls the tools a user calls

    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    # numbers recomputed from the artifacts
    summary = json.loads((out / "labels" / "summary.shard-00000-of-00001.json").read_text())
    assert results["labels"]["summary"] == summary and summary["problems"] == 4
    metrics = [json.loads(x) for x in (out / "train" / "smollm2_prm" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    # the trained PRM is also an HF model: what the README's serving command loads
    assert json.loads((out / "train" / "smollm2_prm" / "hf" / "prm_config.json").read_text())["head"] == "lm_tokens"
    k = results["training"]["averaged_over_steps"]
    last = sum(m["loss"] for m in metrics[-k:]) / k
    assert results["training"]["loss_last"] == pytest.approx(last)
    assert f"→ {last:.4f}" in report
    for label, entry in results["best_of_n"]["methods"].items():
        bon = json.loads(Path(entry["source"]).read_text())
        point = next(p for p in bon["best_of_n"][entry["method"]] if p["n"] == 4)
        assert entry["n4"] == point
        assert f"| {label} |" in report and f"{point['accuracy']:.3f} [{point['low']:.3f}" in report
    assert results["best_of_n"]["problems"] == 4
    for png in ("labels.png", "training_loss.png", "best_of_n.png"):
        assert (out / png).stat().st_size > 5_000

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing finished outputs") == 6  # label, 2 converts, train, 2 evaluations
    assert json.loads((out / "results.json").read_text())["best_of_n"] == results["best_of_n"]
