"""Helper processes of the trainer survive the stop signals Slurm sends to the whole step
(the failure seen in CI: a USR1 during a checkpoint save killed megatron's spawned writer
Manager, and the save the signal asked for crashed with EOFError)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCENARIO = textwrap.dedent("""
    import multiprocessing, os, signal, sys, time
    from nemo_erprm.training.signals import shield_spawned_helpers

    if __name__ == "__main__":
        if sys.argv[1] == "shielded":
            shield_spawned_helpers()
            shield_spawned_helpers()  # idempotent
        handled = []
        for s in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(s, lambda n, f: handled.append(n))
        manager = multiprocessing.get_context("spawn").Manager()  # what megatron's ckpt writer starts
        queue = manager.Queue()
        for s in (signal.SIGUSR1, signal.SIGTERM):  # what Slurm does: every process of the step
            os.kill(manager._process.pid, s)
            os.kill(os.getpid(), s)
        time.sleep(0.5)
        try:
            queue.put("written")
            helper = queue.get(timeout=5)
        except Exception as e:
            helper = type(e).__name__
        print("helper:", helper)
        print("handled:", sorted(handled))
        print("blocked here:", sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        manager.shutdown()
""")


@pytest.mark.parametrize("mode", ["shielded", "unshielded"])
def test_spawned_helpers_outlive_stop_signals_and_the_rank_still_handles_them(mode, tmp_path):
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    proc = subprocess.run([sys.executable, str(script), mode], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["handled"] == "[10, 15]", proc.stdout + proc.stderr  # the rank got both signals
    assert lines["blocked here"] == "[]"  # the rank's own mask is left as it was
    if mode == "shielded":
        assert lines["helper"] == "written"
    else:  # the failure the shield prevents: the spawned helper died of the signal
        assert lines["helper"] != "written"
