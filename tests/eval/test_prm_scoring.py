"""Best-of-N with a PRM converted from a tiny Llama: the megatron checkpoint and its HF export
give the same step scores; those equal P(+) read off the original HF model's logits at the
step tags (called directly); the aggregated scores are the aggregations of those; the whole
CLI pipeline writes its report and plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_erprm.eval.aggregate import aggregate
from nemo_erprm.eval.candidates import load_candidates
from nemo_erprm.labeling.segmentation import render_prm_input
from tests.tiny_models import build_tiny_llama

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prm(shared_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("bon_prm")
    hf = build_tiny_llama(work / "tiny_llama")
    ckpt, export = work / "ckpt", work / "export"
    for cmd in (["tools/convert_hf_checkpoint.py", "--hf-dir", str(hf), "--out", str(ckpt)],
                ["tools/export_hf_checkpoint.py", "--ckpt", str(ckpt), "--out", str(export)]):
        subprocess.run([sys.executable] + cmd, cwd=REPO, check=True, capture_output=True)
    cands = work / "slice.jsonl"
    lines = (shared_data / "bon" / "gsm8k_test_4_model_solutions.jsonl").read_text().splitlines()[:6]
    cands.write_text("\n".join(lines) + "\n")
    return {"work": work, "hf": hf, "ckpt": ckpt, "export": export, "candidates": cands}


def run_bon(prm, scorer: Path, out: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, "tools/best_of_n.py", "--candidates", str(prm["candidates"]),
                           "--scorer", str(scorer), "--out", str(out), "--bootstrap", "100", "--no-progress",
                           "--batch-size", "4"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "prm_min" in proc.stdout and f"plot: {out / 'best_of_n.png'}" in proc.stdout
    return [json.loads(x) for x in (out / "candidates_scored.jsonl").read_text().splitlines()]


def direct_scores(hf_dir: Path, question: str, steps: list[str]) -> list[float]:
    """P(+) at each tag from the original HF causal LM: logits of '+' vs '-' (2-way softmax)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = tok(render_prm_input(question, steps, "ки"))["input_ids"]
    tag = tok.convert_tokens_to_ids("ки")
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    at = [i for i, t in enumerate(ids) if t == tag]
    return torch.softmax(logits[at][:, [plus, minus]], dim=-1)[:, 0].tolist()


def test_megatron_and_hf_export_scores_agree_and_equal_direct_calls(prm):
    mega = run_bon(prm, prm["ckpt"], prm["work"] / "out_megatron")
    hf = run_bon(prm, prm["export"], prm["work"] / "out_hf")
    problems, _ = load_candidates(prm["candidates"])
    worst = 0.0
    for p, row_m, row_h in zip(problems, mega, hf):
        for c, cm, ch in zip(p.candidates, row_m["candidates"], row_h["candidates"]):
            assert len(cm["step_scores"]) == len(c.steps) == len(ch["step_scores"])
            worst = max(worst, max(abs(a - b) for a, b in zip(cm["step_scores"], ch["step_scores"])))
            for agg, value in cm["aggregated"].items():
                assert value == pytest.approx(aggregate(cm["step_scores"], agg), abs=1e-12)
    assert worst < 1e-5
    # called directly: the original HF model, first problem's candidates
    p = problems[0]
    for c, cm in zip(p.candidates, mega[0]["candidates"]):
        direct = direct_scores(prm["hf"], p.question, c.steps)
        assert max(abs(a - b) for a, b in zip(direct, cm["step_scores"])) < 1e-5
        assert cm["aggregated"]["min"] == pytest.approx(min(direct), abs=1e-5)
    report = json.loads((prm["work"] / "out_megatron" / "report.json").read_text())
    assert {"prm_min", "weighted_min", "majority", "oracle", "random"} <= set(report["best_of_n"])
    assert report["scorer"]["fingerprint"] and report["data"]["sha256"]


def test_rerun_with_other_aggregation_scores_nothing(prm):
    out = prm["work"] / "out_hf"
    if not (out / "scores_cache.jsonl").exists():
        run_bon(prm, prm["export"], out)
    before = (out / "scores_cache.jsonl").read_text()
    proc = subprocess.run([sys.executable, "tools/best_of_n.py", "--candidates", str(prm["candidates"]), "--scorer",
                           str(prm["export"]), "--out", str(out), "--aggregation", "last", "--bootstrap", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "scores_cache.jsonl").read_text() == before  # every score came from the cache
    assert set(json.loads((out / "report.json").read_text())["best_of_n"]) == {
        "random", "oracle", "majority", "prm_last", "weighted_last"}
