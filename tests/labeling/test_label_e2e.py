"""End to end with a real causal LM (a tiny Llama built in the test) on GSM8K train problems:
valid records, SIGKILL + resume == uninterrupted, and 2 shards merged == 1 process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_erprm.jsonl import read_jsonl
from nemo_erprm.labeling.cli import main as cli
from nemo_erprm.labeling.records import validate_record

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "label_rollouts.py"

pytestmark = pytest.mark.slow


def overrides(shared_data, model_dir, out_dir, **extra):
    base = {
        "input.path": shared_data / "gsm8k" / "train.jsonl",
        "input.limit": 3,
        "backend.model": model_dir,
        "backend.batch_size": 8,
        "sampling.n": 4,
        "sampling.max_new_tokens": 48,
        "sampling.temperature": 1.0,
        "output.dir": out_dir,
        "seed": 11,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def by_id(path):
    return sorted(read_jsonl(path), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def uninterrupted(shared_data, tiny_lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert cli(overrides(shared_data, tiny_lm_dir, out) + ["--no-progress"]) == 0
    return out / "records.shard-00000-of-00001.jsonl"


def test_records_are_valid(uninterrupted):
    records = read_jsonl(uninterrupted)
    assert [r["problem_id"] for r in records] == ["train-000000", "train-000001", "train-000002"]
    for i, r in enumerate(records, 1):
        validate_record(r, str(uninterrupted), i)
        assert r["meta"]["source"] == "reference" and r["meta"]["policy"]["backend"] == "hf"
        assert all(n == 4 for n in r["n_total"][:-1]) and r["n_total"][-1] == 1
        assert r["outcome"] is True  # reference solutions are correct
        assert r["labels"]["inf"][-1] == 1.0
        assert "<|im_start|>assistant" in r["meta"]["prompt"]  # chat template used
    assert records[0]["gold"] == "72"


def test_sigkill_then_resume_equals_uninterrupted(shared_data, tiny_lm_dir, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    shard = out / "records.shard-00000-of-00001.jsonl"
    # one problem per generate window, so records land one at a time and the kill falls between
    # them; the uninterrupted run used the default window: the records must not depend on it
    cmd = [sys.executable, str(TOOL), "--no-progress"] + overrides(shared_data, tiny_lm_dir, out,
                                                                   **{"backend.window_problems": 1})
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    lines_at_kill = shard.read_bytes().count(b"\n")
    assert 1 <= lines_at_kill < 3, "the run finished before the kill; give it more work"

    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{3 - lines_at_kill} problems labeled now, {lines_at_kill} found done" in resumed.stdout
    assert by_id(shard) == by_id(uninterrupted)


def test_two_shards_merged_equal_one_process(shared_data, tiny_lm_dir, tmp_path, uninterrupted):
    out = tmp_path / "sharded"
    for i in (1, 0):
        assert cli(overrides(shared_data, tiny_lm_dir, out) + ["--no-progress", "--shard", str(i),
                                                               "--num-shards", "2"]) == 0
    assert cli(["merge", "--dir", str(out)]) == 0
    assert read_jsonl(out / "records.jsonl") == read_jsonl(uninterrupted)


def test_policy_trajectories(shared_data, tiny_lm_dir, tmp_path):
    out = tmp_path / "policy"
    args = overrides(shared_data, tiny_lm_dir, out, **{
        "input.limit": 1, "trajectories": "policy", "sampling.num_trajectories": 2, "sampling.n": 2,
        "segmentation.min_chars": 4, "output.store_completions": True,
    })
    assert cli(args + ["--no-progress"]) == 0
    records = read_jsonl(out / "records.shard-00000-of-00001.jsonl")
    assert 1 <= len(records) <= 2
    for r in records:
        validate_record(r)
        assert r["meta"]["source"] == "policy"
        assert len(r["completions"]) == len(r["steps"]) and all(len(c) == 2 for c in r["completions"][:-1])
    summary = json.loads((out / "summary.shard-00000-of-00001.json").read_text())
    assert summary["records"] == len(records)
