"""Shared by the training tests: labeled records + an initial checkpoint, the uninterrupted
reference run, and helpers to launch `python -m nemo_erprm.train` and read its run folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.runtime.parallel import free_port
from tests.tiny_models import build_tiny_llama

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def setup(shared_data, tmp_path_factory):
    """Labeled records (tiny Llama as the policy) and a PRM checkpoint converted from it."""
    work = tmp_path_factory.mktemp("train")
    hf = build_tiny_llama(work / "tiny_llama")
    labels = work / "labels"
    subprocess.run([sys.executable, "tools/label_rollouts.py", "--config", "conf/demo/label.yaml", "--no-progress",
                    f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}", "input.limit=40", f"backend.model={hf}",
                    "sampling.n=2", "sampling.max_new_tokens=16", f"output.dir={labels}"],
                   cwd=REPO, check=True, capture_output=True)
    records = labels / "records.shard-00000-of-00001.jsonl"
    ckpt = work / "init_ckpt"
    subprocess.run([sys.executable, "tools/convert_hf_checkpoint.py", "--hf-dir", str(hf), "--out", str(ckpt)],
                   cwd=REPO, check=True, capture_output=True)
    return {"work": work, "records": records, "ckpt": ckpt}


def overrides(setup, out: Path, **extra) -> list[str]:
    base = {
        "run.output_dir": out, "model.init_from": setup["ckpt"], "model.seq_length": 256,
        "data.train": setup["records"], "data.val_fraction": 0.2, "data.micro_batch_size": 2,
        "data.global_batch_size": 4, "optim.lr": 5e-3, "trainer.max_steps": 24, "trainer.val_check_interval": 12,
        "trainer.checkpoint_every_n_steps": 12, "logging.sample_ids": True, "logging.tensorboard": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def train_cmd(nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "nemo_erprm.train", "--config", "conf/tiny_cpu.yaml"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "nemo_erprm.train", "--config", "conf/tiny_cpu.yaml"]


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def metrics(out: Path) -> tuple[dict[int, float], dict[int, float]]:
    rows = [json.loads(line) for line in (out / "tiny_cpu" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in rows if "split" not in r}
    val = {r["step"]: r["loss"] for r in rows if r.get("split") == "validation"}
    return train, val


def sample_ids(out: Path) -> dict[int, list[int]]:
    rows = [json.loads(line) for line in (out / "tiny_cpu" / "samples.jsonl").read_text().splitlines()]
    return {r["step"]: r["sample_ids"] for r in rows}


@pytest.fixture(scope="session")
def reference(setup):
    """The uninterrupted TP=1 run."""
    out = setup["work"] / "tp1"
    run(train_cmd() + overrides(setup, out))
    return out




def assert_resumed_equals_reference(reference: Path, out: Path) -> None:
    """A run that was stopped and resumed has the uninterrupted run's losses and saw the same
    samples at every step: none twice, none skipped."""
    ref_train, ref_val = metrics(reference)
    train, val = metrics(out)
    assert sorted(train) == sorted(ref_train)
    # bit-equal when resumed mid-epoch; a few 1e-6 after a resume at an epoch's end (float32
    # summation order across the restored epoch start), same tolerance as the TP/PP parity
    assert max(abs(train[s] - ref_train[s]) for s in train) < 1e-5, (train, ref_train)
    assert abs(val[24] - ref_val[24]) < 1e-5
    ids = sample_ids(out)
    assert ids == sample_ids(reference)  # the same samples at every step
    epoch = data_summary(out)["steps_per_epoch"]
    first_epoch = [i for s in range(1, epoch + 1) for i in ids[s]]
    assert len(first_epoch) == len(set(first_epoch))  # within an epoch no sample comes twice
    assert set(first_epoch) == {i for s in range(epoch + 1, 2 * epoch + 1) for i in ids[s]}


def data_summary(out: Path) -> dict:
    return json.loads((out / "tiny_cpu" / "data_summary.json").read_text())
