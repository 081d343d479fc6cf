"""`python -m nemo_erprm.train` end to end on the CPU backend (gloo): records from
tools/label_rollouts.py, an initial checkpoint from tools/convert_hf_checkpoint.py, TP/PP
parity, exact resume after a stop and after a signal, and a TP=2 checkpoint read at TP=1/PP=2."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.training.conftest import assert_resumed_equals_reference, data_summary, metrics, overrides, run, train_cmd

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_loss_falls_and_run_folder_is_complete(reference):
    train, val = metrics(reference)
    assert sorted(train) == list(range(1, 25))
    assert set(val) == {12, 24}  # every 12 steps, not also at each epoch's end
    epoch = data_summary(reference)["steps_per_epoch"]
    assert 2 <= epoch <= 8, epoch  # several epochs: the same batches come back in the same order
    first, later = [train[s] for s in range(1, epoch + 1)], [train[s + 2 * epoch] for s in range(1, epoch + 1)]
    assert sum(later) < 0.9 * sum(first), (first, later)  # same batches, two epochs later
    assert val[24] < 0.8 * val[12]
    rows = [json.loads(x) for x in (reference / "tiny_cpu" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tokens_per_s"] > 0 and r["lr"] is not None for r in rows if "split" not in r)
    assert (reference / "tiny_cpu" / "checkpoints" / "step=23-last" / "weights").is_dir()
    assert (reference / "tiny_cpu" / "config.yaml").exists()


@pytest.fixture(scope="module")
def tp2_run(setup):
    out = setup["work"] / "tp2"
    proc = run(train_cmd(2) + overrides(setup, out, **{"model.tensor_model_parallel_size": 2}))
    assert proc.stdout.count("training 24 steps") == 1, proc.stdout  # rank 0 alone says it
    return out


@pytest.fixture(scope="module")
def pp2_run(setup):
    out = setup["work"] / "pp2"
    run(train_cmd(2) + overrides(setup, out, **{"model.pipeline_model_parallel_size": 2}))
    return out


@pytest.mark.parametrize("layout", ["tp2_run", "pp2_run"])
def test_tp2_pp2_match_tp1_losses(reference, layout, request):
    out = request.getfixturevalue(layout)
    ref_train, ref_val = metrics(reference)
    train, val = metrics(out)
    assert sorted(train) == sorted(ref_train)
    assert max(abs(train[s] - ref_train[s]) for s in train) < 1e-5
    assert max(abs(val[s] - ref_val[s]) for s in val) < 1e-5
    # the reference pads each micro-batch to its longest row; pipeline stages need one fixed width
    assert effective(reference)["pad_to"] == "longest"
    assert effective(out)["pad_to"] == ("max_length" if layout == "pp2_run" else "longest")


def effective(out: Path) -> dict:
    return json.loads((out / "tiny_cpu" / "effective_settings.json").read_text())["effective"]


def test_padding_to_max_length_trains_exactly_as_to_the_longest_row(setup, reference):
    """data.pad_to=max_length (every row seq_length wide) vs the default (each micro-batch as wide
    as its longest row): padding after a row changes neither the loss nor the gradient."""
    out = setup["work"] / "max_length"
    run(train_cmd() + overrides(setup, out, **{"data.pad_to": "max_length", "trainer.stop_after_steps": 4}))
    assert effective(out)["pad_to"] == "max_length"
    rows = [json.loads(x) for x in (out / "tiny_cpu" / "metrics.jsonl").read_text().splitlines()]
    ref = {r["step"]: r for r in map(json.loads, (reference / "tiny_cpu" / "metrics.jsonl").read_text().splitlines())
           if "split" not in r}
    train = [r for r in rows if "split" not in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert abs(r["loss"] - ref[r["step"]]["loss"]) < 1e-5, (r, ref[r["step"]])
        assert abs(r["grad_norm"] - ref[r["step"]]["grad_norm"]) < 1e-5 * max(1.0, r["grad_norm"]), (r, ref[r["step"]])


@pytest.mark.parametrize("layout", [{}, {"model.pipeline_model_parallel_size": 2}], ids=["tp1", "pp2"])
def test_tp2_checkpoint_evaluates_the_same_at_tp1_and_pp2(setup, tp2_run, layout):
    _, tp2_val = metrics(tp2_run)
    out = setup["work"] / f"eval_{'pp2' if layout else 'tp1'}"
    nproc = 2 if layout else 1
    run(train_cmd(nproc) + overrides(setup, out, **layout, **{
        "model.init_from": tp2_run / "tiny_cpu" / "checkpoints" / "step=23-last", "trainer.validate_only": True}))
    _, val = metrics(out)
    assert abs(val[0] - tp2_val[24]) < 1e-5, (val, tp2_val)


def test_stop_at_an_epoch_end_then_resume(setup, reference):
    """Stopped after k steps, k = one epoch (the boundary case; SIGTERM below resumes mid-epoch)."""
    k = data_summary(reference)["steps_per_epoch"]
    out = setup["work"] / "stopped"
    run(train_cmd() + overrides(setup, out, **{"trainer.stop_after_steps": k}))
    train, _ = metrics(out)
    assert sorted(train) == list(range(1, k + 1))
    proc = run(train_cmd() + overrides(setup, out))
    assert f"resumed at step {k}" in proc.stdout
    assert_resumed_equals_reference(reference, out)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["sigterm", "ctrl_c"])
def test_signal_mid_run_then_resume(setup, reference, sig, status):
    """SIGTERM (Slurm's preemption) and Ctrl-C both end the step, checkpoint it and say so on the
    console; Ctrl-C exits 130 (the run is not finished), SIGTERM 0 (the launcher requeues)."""
    out = setup["work"] / f"signalled_{sig.name}"
    stray = REPO / "lightning_logs"  # Lightning's default logger, when no logger of ours is on
    stray_before = stray.exists()
    proc = subprocess.Popen(train_cmd() + overrides(setup, out), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = out / "tiny_cpu" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and '"step":2,' in log.read_text():
            proc.send_signal(sig)
            break
        time.sleep(0.1)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == status, output[-4000:]
    assert f"{sig.name} received: writing a checkpoint at step" in output
    assert not list((out / "tiny_cpu" / "checkpoints").glob("*-unfinished"))
    assert stray_before or not stray.exists()  # logging.tensorboard=false writes no TensorBoard files anywhere
    train, _ = metrics(out)
    stopped_at = max(train)
    assert 2 <= stopped_at < 24
    assert (out / "tiny_cpu" / "checkpoints" / f"step={stopped_at - 1}-last").is_dir()
    proc2 = run(train_cmd() + overrides(setup, out))
    assert f"resumed at step {stopped_at}" in proc2.stdout
    assert_resumed_equals_reference(reference, out)


def test_resume_with_other_data_is_refused(setup, reference, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(setup["records"].read_text())
    proc = subprocess.run(train_cmd() + overrides(setup, reference, **{"data.train": other}), cwd=REPO,
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 2
    assert "data" in proc.stderr and "set run.name" in proc.stderr
