"""What the labeling console says while it works: the bar counts completions (a window of
problems is generated in one call, so a bar of problems sat at 0 for minutes), truncated
completions are printed, `--no-progress` hides every library's bar too, and an interrupt
message starts on a line of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "label_rollouts.py"


def label(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "--config", "conf/demo/label.yaml", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_bar_counts_completions_and_truncations_are_printed(shared_data, tiny_lm_dir, tmp_path):
    proc = label([f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}", "input.limit=2", f"backend.model={tiny_lm_dir}",
                  "sampling.n=2", "sampling.max_new_tokens=4", "backend.batch_size=2", f"output.dir={tmp_path / 'o'}"],
                 # tqdm redraws at most every 0.1 s: a fast machine would skip the batch-by-batch states
                 env={"TQDM_MININTERVAL": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    completions = int(re.search(r"(\d+) completions in", proc.stdout).group(1))
    states = re.findall(r"(\d+)/(\d+) \[", proc.stderr)  # tqdm's "n/total [elapsed..."
    assert states, proc.stderr[-2000:]
    done, total = map(int, states[-1])
    assert done == total == completions > 0
    assert len({n for n, _ in states}) > 2  # it moved batch by batch, not once per window
    assert "completion" in proc.stderr and "problems=2/2" in proc.stderr
    # 4 new tokens from a random tiny model never reach an answer: every completion is truncated
    assert f"{completions} completions of this shard stopped at sampling.max_new_tokens=4" in proc.stdout


@pytest.mark.slow
def test_no_progress_hides_the_gguf_loading_bar(shared_data, tmp_path):
    """The embedded SmolLM2 is a GGUF file: transformers draws its own de-quantizing bar."""
    proc = label([f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}", "input.limit=1", "sampling.n=1",
                  "sampling.num_trajectories=1", "sampling.max_new_tokens=2", f"output.dir={tmp_path / 'o'}",
                  "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "de-quantizing" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]


def test_interrupt_message_starts_on_its_own_line(capsys):
    from tqdm import tqdm

    from nemo_erprm.errors import run_reporting_errors

    def work():
        bar = tqdm(total=10, desc="label shard 0/1")
        bar.update(3)
        raise KeyboardInterrupt

    assert run_reporting_errors(work) == 130
    err = capsys.readouterr().err
    assert "\ninterrupted: " in err and err.index("3/10") < err.index("interrupted")
