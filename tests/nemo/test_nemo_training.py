"""`ERPRMModel` trained through NeMo's Trainer + MegatronStrategy on the CPU backend."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.runtime.parallel import free_port

WORKER = Path(__file__).with_name("nemo_worker.py")
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(cmd, timeout=600):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.parametrize("head", ["lm_tokens", "scalar"])
def test_tiny_model_learns_step_labels(shared_data, tmp_path, head):
    """Acceptance: label = f(step text); <= 300 CPU steps bring held-out step accuracy >= 0.9."""
    out = tmp_path / "out.json"
    run([sys.executable, str(WORKER), "--out", str(out), "--workdir", str(tmp_path / "w"), "--steps", "150",
         "--val-every", "50", "--head", head])
    result = json.loads(out.read_text())
    train = [h["train"] for h in result["history"] if "train" in h]
    val = [h for h in result["history"] if "train" not in h]
    assert train[0]["step_accuracy"] < 0.75  # it starts near chance
    assert val and val[-1]["step_accuracy"] >= 0.9, val
    assert val[-1]["loss"] < 0.5 * train[0]["loss"]
    # DataModule state: consumed samples saved and restored
    assert result["consumed_samples"] == 150 * 8 == result["restored_consumed_samples"]
    assert result["counts"]["train"]["kept"] == 600


def test_tp2_pp2_packed_training_learns(shared_data, tmp_path):
    out = tmp_path / "out.json"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=4", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", str(WORKER), "--out", str(out), "--workdir", str(tmp_path / "w"),
         "--tp", "2", "--pp", "2", "--steps", "40", "--val-every", "20", "--packing"])
    result = json.loads(out.read_text())
    val = [h for h in result["history"] if "train" not in h]
    assert len(val) == 2 and val[-1]["loss"] < val[0]["loss"] and val[-1]["step_accuracy"] >= 0.8, val
    assert result["consumed_samples"] == 40 * 8
