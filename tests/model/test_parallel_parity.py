"""TP/PP/DP parity of the ER-PRM core on CPU (torchrun over gloo, CPU backend).

Every layout starts from one dist checkpoint written by a TP=1 process (same seed does not
give the same weights across TP sizes), scores every step, then trains 5 optimizer steps.
Step scores and the per-step training losses must match TP=1 within 1e-5 (fp32).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.runtime.parallel import free_port

WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5

pytestmark = pytest.mark.slow


def torchrun(nproc: int, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    ckpt = root / "ckpt"
    torchrun(1, "--save", "--ckpt", str(ckpt))
    out = root / "tp1.json"
    torchrun(1, "--ckpt", str(ckpt), "--out", str(out))
    return ckpt, json.loads(out.read_text())


def compare(ref: dict, got: dict) -> dict:
    diffs = {}
    for head in ("lm_tokens", "scalar"):
        a, b = ref[head], got[head]
        assert [s[:2] for s in a["initial_steps"]] == [s[:2] for s in b["initial_steps"]]
        diffs[head] = (
            max(abs(x[2] - y[2]) for x, y in zip(a["initial_steps"], b["initial_steps"])),
            max(abs(x[3] - y[3]) for x, y in zip(a["initial_steps"], b["initial_steps"])),
            max(abs(x - y) for x, y in zip(a["train_losses"], b["train_losses"])),
        )
    return diffs


@pytest.mark.parametrize(
    "name, nproc, args",
    [
        ("tp2", 2, ["--tp", "2"]),
        ("pp2", 2, ["--pp", "2"]),
        ("tp2pp2", 4, ["--tp", "2", "--pp", "2"]),
        ("pp2vpp2", 2, ["--pp", "2", "--vpp", "2"]),  # interleaved (virtual) pipeline
        ("dp2", 2, []),
        ("micro1", 1, ["--micro", "1"]),  # another microbatch split of the same global batch
    ],
)
def test_layout_matches_tp1(reference, tmp_path, name, nproc, args):
    ckpt, ref = reference
    out = tmp_path / f"{name}.json"
    torchrun(nproc, "--ckpt", str(ckpt), "--out", str(out), *args)
    diffs = compare(ref, json.loads(out.read_text()))
    print(name, diffs)
    for head, (d_score, d_step_loss, d_train) in diffs.items():
        assert d_score < TOL and d_step_loss < TOL and d_train < TOL, (head, diffs)
    # the 5 steps really train: the loss moves
    for head in ref:
        assert abs(ref[head]["train_losses"][0] - ref[head]["train_losses"][-1]) > 1e-3
