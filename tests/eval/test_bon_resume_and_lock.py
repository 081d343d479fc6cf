"""`tools/best_of_n.py`: one run per --out, and `--generate` that keeps what it sampled (issue
22: an interrupted `--generate` said "finished work is saved; rerun the same command to
continue" but wrote candidates only at the end; two runs on one --out both exited 0 and the
score cache held every key twice).

The slow test runs the real tool with a tiny random Llama as the policy: a second run on the
--out of a running one is refused with one line naming it; SIGINT after the first problems
leaves their candidates, and the rerun samples only the others, ending with the file an
uninterrupted run writes. The fast ones check the resume rules with a recording backend."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import nemo_erprm.labeling.backends as backends
from nemo_erprm.errors import RunStateError
from nemo_erprm.eval.cache import ScoreCache, score_key
from nemo_erprm.eval.cli import build_parser, generate_candidates
from nemo_erprm.jsonl import read_jsonl
from tests.processes import wait_until

REPO = Path(__file__).resolve().parents[2]
LIMIT = 6


def generate_cmd(shared_data: Path, policy: Path, out: Path) -> list[str]:
    return [sys.executable, "tools/best_of_n.py", "--generate", "2", "--policy", str(policy), "--problems",
            str(shared_data / "gsm8k" / "test.jsonl"), "--limit", str(LIMIT), "--max-new-tokens", "32",
            "--scorer", "none", "--out", str(out)]


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.mark.slow
def test_second_run_refused_and_interrupted_generate_resumes_to_the_uninterrupted_file(shared_data, tiny_lm_dir,
                                                                                       tmp_path):
    full = tmp_path / "full"
    first = subprocess.Popen(generate_cmd(shared_data, tiny_lm_dir, full), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (full / "run.lock").exists(), first, "it took the --out lock")
        second = subprocess.run([sys.executable, "tools/best_of_n.py", "--candidates",
                                 str(shared_data / "bon" / "gsm8k_test_4_model_solutions.jsonl"), "--scorer", "none",
                                 "--out", str(full)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second one was refused"
        _, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    [line] = [x for x in second.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: --out {full}: in use by another run, pid {first.pid} on {socket.gethostname()}")
    assert first.returncode == 0, stderr[-3000:]
    assert not (full / "run.lock").exists()
    assert json.loads((full / "report.json").read_text())["data"]["path"] == str(full / "candidates.jsonl")

    out = tmp_path / "interrupted"
    candidates = out / "candidates.jsonl"
    # SIGINT at its default, whatever the test runner inherited, so Python turns it into Ctrl-C
    run = subprocess.Popen(generate_cmd(shared_data, tiny_lm_dir, out), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: lines(candidates) >= 1, run, "its first problem")
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 130, stderr[-3000:]
    assert "interrupted: finished work is saved; rerun the same command to continue" in stderr
    kept = lines(candidates)
    assert 1 <= kept < LIMIT, "the run finished before the interrupt; give it more work"
    assert not (out / "run.lock").exists()

    rerun = subprocess.run(generate_cmd(shared_data, tiny_lm_dir, out), cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{kept} of {LIMIT} problems' candidates found in {candidates}; sampling the other {LIMIT - kept}" \
        in rerun.stderr
    assert candidates.read_bytes() == (full / "candidates.jsonl").read_bytes()
    assert (out / "report.json").exists()


class SeedEcho:
    """A generation backend whose candidates name the seed they were sampled with (it stands in
    for the HF backend, whose seeded sampling tests/labeling checks, to record what is sampled)."""

    def __init__(self):
        self.calls = []

    def format_prompt(self, question):
        return question

    def generate(self, prompts, n, seed):
        self.calls.append(seed)
        return [[f"seed {seed} sample {j}\n#### {seed}" for j in range(n)] for _ in prompts]

    def close(self):
        pass


def generate(tmp_path, monkeypatch, *extra: str) -> tuple[Path, SeedEcho]:
    backend = SeedEcho()
    monkeypatch.setattr(backends, "build_backend", lambda b, s, p: backend)
    problems = tmp_path / "problems.jsonl"
    if not problems.exists():
        problems.write_text("".join(f'{{"question": "What is {i} + 1?", "answer": "#### {i + 1}"}}\n'
                                    for i in range(4)))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    args = build_parser().parse_args(["--generate", "2", "--problems", str(problems), "--scorer", "none",
                                      "--out", str(out), "--no-progress", "--seed", "100", *extra])
    return generate_candidates(args, out), backend


def test_rerun_samples_only_missing_problems_with_their_own_seeds(tmp_path, monkeypatch):
    path, first = generate(tmp_path, monkeypatch)
    assert first.calls == [100, 101, 102, 103]
    complete = path.read_text()
    rows = complete.splitlines(keepends=True)
    path.write_text(rows[0] + rows[1][: len(rows[1]) // 2])  # killed while writing problem 2
    _, again = generate(tmp_path, monkeypatch)
    assert again.calls == [101, 102, 103]  # the seeds of problems 2-4, as in the first run
    assert path.read_text() == complete
    _, third = generate(tmp_path, monkeypatch)
    assert third.calls == []  # everything there: the policy is not even loaded


def test_rerun_with_other_generation_settings_is_refused(tmp_path, monkeypatch):
    path, _ = generate(tmp_path, monkeypatch)
    before = path.read_text()
    with pytest.raises(RunStateError, match=r"other settings \(temperature: 0.7 there, 0.2 now\)"):
        generate(tmp_path, monkeypatch, "--temperature", "0.2")
    assert path.read_text() == before


def test_score_cache_written_twice_is_read_and_kept_once(tmp_path):
    path = tmp_path / "scores_cache.jsonl"
    items = [("q1", ["a", "b"]), ("q2", ["c"])]
    cache = ScoreCache(path)
    cache.score("fp", items, lambda batch: [[0.5] * len(steps) for _, steps in batch])
    cache.close()
    once = path.read_text()
    path.write_text(once + once)  # two runs on one --out, each appending its scores
    cache = ScoreCache(path)

    def must_not_score(batch):
        raise AssertionError("cached")

    assert cache.score("fp", items, must_not_score) == [[0.5, 0.5], [0.5]]
    cache.close()
    assert path.read_text() == once and len(read_jsonl(path)) == len({score_key("fp", q, s) for q, s in items})
