"""Quiet consoles (issue 17): other libraries' warnings go to the run's log file, not the
terminal (``ERPRM_VERBOSE=1`` brings them back); ``--help`` is fast and prints no warning; a
2-step training run prints at most 30 lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = [["tools/label_rollouts.py"], ["tools/label_rollouts.py", "relabel"], ["tools/best_of_n.py"],
         ["tools/convert_hf_checkpoint.py"], ["tools/export_hf_checkpoint.py"], ["tools/serve_prm.py"],
         ["-m", "nemo_erprm.experiments.demo"], ["-m", "nemo_erprm.train"]]
# set by tools for their own child processes: a test's subprocess starts without them
INHERITED = ("PYTHONWARNINGS", "ERPRM_VERBOSE")
# a library's warning, a library's log record, our own log record and print, and an error
PROBE = """
import logging, sys, warnings
from nemo_erprm.runtime.logs import quiet_third_party, set_log_file
quiet_third_party("probe")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
warnings.warn("a library's UserWarning")
logging.getLogger("megatron.core").warning("a library's log warning")
logging.getLogger("lightning").info("GPU available: False")
set_log_file(sys.argv[1])
logging.getLogger("nemo_erprm.train").warning("our own warning")
logging.getLogger("nemo").error("a library's error")
print("our own line")
"""


def has_warning(text: str) -> bool:
    return any(w in text for w in ("Warning", "WARNING", "[NeMo W", "warnings.warn"))


def run(args, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**{k: v for k, v in os.environ.items() if k not in INHERITED}, **(env or {})})


def test_library_warnings_go_to_the_log_file_unless_verbose(tmp_path):
    log = tmp_path / "logs" / "library.log"
    proc = run(["-c", PROBE, str(log)], env={"ERPRM_VERBOSE": ""})
    console = proc.stdout + proc.stderr
    assert "our own line" in console and "our own warning" in console and "a library's error" in console
    assert "UserWarning" not in console and "log warning" not in console and "GPU available" not in console
    assert "(3 library warnings/log lines hidden: " in console and str(log) in console
    kept = log.read_text()
    assert "a library's UserWarning" in kept and "a library's log warning" in kept and "GPU available" in kept

    proc = run(["-c", PROBE, str(tmp_path / "verbose.log")], env={"ERPRM_VERBOSE": "1"})
    assert "a library's UserWarning" in proc.stderr and "a library's log warning" in proc.stderr
    assert not (tmp_path / "verbose.log").exists()


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: " ".join(t))
def test_help_is_fast_and_quiet(tool):
    started = time.time()
    proc = run([*tool, "--help"])
    elapsed = time.time() - started
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr
    assert not has_warning(proc.stdout + proc.stderr) and proc.stderr == ""
    assert elapsed < 2.0, f"{' '.join(tool)} --help took {elapsed:.1f}s"


@pytest.mark.slow
def test_two_step_training_prints_at_most_30_lines(tmp_path):
    """Also: a relative run.output_dir (the README's) keeps TensorBoard in <run>/tb, and a rerun
    of the finished run says so instead of announcing a training."""
    import shutil

    from tests.training.test_tiny_cpu_recipe import assert_tensorboard_in

    relative = Path("outputs") / f"test_quiet_{os.getpid()}"
    args = ["-m", "nemo_erprm.train", "--config", "conf/tiny_cpu.yaml", "trainer.max_steps=2",
            f"run.output_dir={relative}"]
    try:
        proc = run(args, env={"ERPRM_VERBOSE": ""}, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = (proc.stdout + proc.stderr).splitlines()
        assert len(lines) <= 30, "\n".join(lines)
        assert any(line.startswith("step 2/2") for line in lines)
        assert not has_warning("\n".join(lines))
        run_dir = REPO / relative / "tiny_cpu"
        # the hidden warnings are kept (NeMo's own, e.g. the W&B-less ModelCheckpoint note)
        assert "[NeMo W" in (run_dir / "library.rank0.log").read_text()
        assert_tensorboard_in(run_dir, REPO / relative)

        again = run(args, env={"ERPRM_VERBOSE": ""}, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"nothing to train: {relative / 'tiny_cpu'} already finished its 2 steps (step=1-last)" in again.stdout
        assert "step 1/2" not in again.stdout
    finally:
        shutil.rmtree(REPO / relative, ignore_errors=True)
