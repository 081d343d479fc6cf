"""One run per labeling shard (issue 22: two identical runs on one output.dir both exited 0 with
every record written twice, `records: 8` for 4 problems, and only `merge` noticed). Through
`tools/label_rollouts.py` with real processes and a real (tiny) policy: a second run of a shard
is refused with one line naming the holder while the other shard of the job runs; a run killed
with SIGKILL leaves its lock, which the rerun takes over. Records written twice by the old code
are read once by the summary, merge, export and the training data reader."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.data.examples import load_examples
from nemo_erprm.jsonl import read_jsonl
from nemo_erprm.labeling.cli import main as cli
from nemo_erprm.labeling.runner import merge_shards, run_labeling
from tests.processes import wait_until
from tests.labeling.test_runner import offline_cfg

REPO = Path(__file__).resolve().parents[2]
PROBLEMS = 6


def label_cmd(shared_data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "tools/label_rollouts.py", "--config", "conf/demo/label.yaml", "--no-progress",
            f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}", f"input.limit={PROBLEMS}",
            f"backend.model={model}", "sampling.n=2", "sampling.max_new_tokens=24", f"output.dir={out}", *extra]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_each_problem_once(out: Path) -> None:
    records = read_jsonl(out / "records.jsonl")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    assert len({r["problem_id"] for r in records}) == PROBLEMS


@pytest.mark.slow
def test_a_second_run_of_a_shard_is_refused_while_the_other_shard_runs(shared_data, tiny_lm_dir, tmp_path):
    out = tmp_path / "labels"
    first = subprocess.Popen(label_cmd(shared_data, tiny_lm_dir, out, "--shard", "0", "--num-shards", "2"), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (out / "records.shard-00000-of-00002.lock").exists(), first, "it took its shard's lock")
        second = subprocess.run(label_cmd(shared_data, tiny_lm_dir, out, "--shard", "0", "--num-shards", "2"),
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second one was refused"
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        [line] = error_lines(second.stderr)
        assert line.startswith(f"error: output.dir={out} (shard 0 of 2): in use by another run, "
                               f"pid {first.pid} on {socket.gethostname()}"), line
        # the job's other shard is not blocked by it
        other = subprocess.run(label_cmd(shared_data, tiny_lm_dir, out, "--shard", "1", "--num-shards", "2"),
                               cwd=REPO, capture_output=True, text=True, timeout=600)
        assert other.returncode == 0, other.stderr[-3000:]
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.lock")) == []  # both runs released their locks
    assert cli(["merge", "--dir", str(out)]) == 0
    assert_each_problem_once(out)


@pytest.mark.slow
def test_a_killed_run_leaves_its_lock_and_the_rerun_takes_it_over(shared_data, tiny_lm_dir, tmp_path):
    out = tmp_path / "labels"
    records = out / "records.shard-00000-of-00001.jsonl"
    # one problem per generate window: records land one problem at a time, the kill falls between
    cmd = label_cmd(shared_data, tiny_lm_dir, out, "backend.window_problems=1")
    killed = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: records.exists() and records.read_text().count("\n") > 0, killed, "its first problem")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert records.read_text().count("\n") < PROBLEMS, "the run finished before the kill; give it more work"
    lock = out / "records.shard-00000-of-00001.lock"
    assert json.loads(lock.read_text())["pid"] == killed.pid  # a crash leaves the lock file
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"took over the lock left by pid {killed.pid} on {socket.gethostname()}" in rerun.stderr
    assert not lock.exists()
    assert cli(["merge", "--dir", str(out)]) == 0
    assert_each_problem_once(out)


def test_records_written_twice_are_read_once(tmp_path, capsys):
    """A shard file as two runs without a lock left it (each problem appended by both)."""
    cfg = offline_cfg(tmp_path)
    path = run_labeling(cfg, progress=False).records_path
    once = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line + line for line in once))
    again = run_labeling(cfg, progress=False)  # the rerun's summary counts each record once
    assert again.problems_labeled == 0 and again.summary["records"] == len(once)
    merged, n = merge_shards(cfg.output.dir)
    assert n == len(once) and merged.read_text() == "".join(once)
    assert cli(["export", "--input", str(path), "--format", "text_value", "--eta", "2",
                "--out", str(tmp_path / "tv.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "tv.jsonl")) == len(once)
    assert "records repeat an earlier record's id" in capsys.readouterr().err
    assert len(load_examples(path, "auto", 2.0, cfg.segmentation.step_tag)) == len(once)
