"""`bash benchmarks/gpu_run.sh OUT_DIR`: the prepared run for a bare CUDA PyTorch machine.
Here (no GPU) it must refuse with its reasons and exit 3; its budget decides which steps run;
and the commands it prepares are checked where a CPU can: the sweep's config through the
sweep's loader (--plan), the throughput run's generated config and records through the
training entry point's config loader and data pipeline, and the parity step's CPU half (the
common checkpoint, then the fp32 CPU run that the GPU run is compared with) for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_run  # noqa: E402


def run_sh(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "ERPRM_PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", "benchmarks/gpu_run.sh", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=300)


def test_without_cuda_it_exits_3_with_its_reasons_and_writes_nothing_else(tmp_path):
    out = tmp_path / "out"
    proc = run_sh(str(out), "--kit", str(tmp_path / "no-kit"), "--work", str(tmp_path / "work"),
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot run here" in proc.stderr and "no CUDA GPU is visible" in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "cannot_run" and any("no CUDA GPU" in r for r in results["reasons"])
    assert sorted(p.name for p in out.iterdir()) == ["results.json"] and not (tmp_path / "work").exists()


def test_a_kit_for_another_python_is_a_reason_too(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "manifest.json").write_text(json.dumps({"python_version": "3.99", "carried": []}))
    proc = run_sh(str(tmp_path / "out"), "--kit", str(kit), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 3
    assert "is for Python 3.99" in proc.stderr and "make offline-kit KIT_PYTHON_VERSION=" in proc.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run_sh().returncode == 2
    assert run_sh("--budget-s", "10").returncode == 2  # an option where OUT_DIR belongs
    bad = run_sh(str(tmp_path / "out"), "--skip", "parity,nonsense")
    assert bad.returncode == 2 and "unknown step(s) ['nonsense']" in bad.stderr
    assert not (tmp_path / "out").exists()


def test_budget_admits_a_step_only_when_its_estimate_fits():
    now = [0.0]
    budget = gpu_run.Budget(480, clock=lambda: now[0])
    assert budget.admits("parity") is None
    now[0] = 480 - gpu_run.ESTIMATE_S["throughput"] + 1
    assert "time budget" in budget.admits("throughput")
    now[0] = 480 - gpu_run.SWEEP_MIN_S
    assert budget.admits("sweep") is None  # the sweep takes what is left (a rerun resumes it)
    plan = gpu_run.plan_steps(480, set())
    assert plan == {"parity": None, "throughput": None, "sweep": None}
    plan = gpu_run.plan_steps(300, set())
    assert plan["parity"] is None and plan["throughput"] is None and "time budget" in plan["sweep"]
    assert gpu_run.plan_steps(480, {"throughput"})["throughput"] == "--skip"


def test_plan_checks_the_sweep_config_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_run.py", str(tmp_path / "out"), "--plan"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sweep      runs" in proc.stdout and "conf/experiments/arith_gpu.yaml: seeds [1]" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nparallel: 0\n")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_run.py", str(tmp_path / "out"), "--plan",
                           "--sweep-config", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "parallel must be >= 1" in proc.stderr


def test_sweep_summary_reads_the_reports_figures():
    seed = {"policy": {"params": 19_000_000, "pass@1": 0.61, "chosen_step": 1800}, "test_pass_at_1": 0.58,
            "acceptance": {"label_set": "eta2", "n": 8, "vs": {"majority": {"diff": 0.03, "low": 0.01, "high": 0.05}}},
            "divergence_step_auc": {"eta2": {"auc": 0.7, "pairs": 100}}, "first_error": {"eta2": {"f1": 0.5}},
            "probes": {"corruption.eta2": {"p_right_above_corrupted": 0.9, "pairs": 200}}}
    s = gpu_run.sweep_summary(seed)
    assert (s["policy_val_pass@1"], s["best_label_set"], s["vs"]["majority"]["diff"]) == (0.61, "eta2", 0.03)
    assert s["corruption_probe"] == {"corruption.eta2": 0.9} and s["divergence_step_auc"] == {"eta2": 0.7}


@pytest.mark.slow
def test_throughput_config_resolves_and_packs_four_samples_a_row(tmp_path):
    from nemo_erprm.training.config import load_train_config

    config, lengths = gpu_run.throughput_config(tmp_path, gpu_run.kit_tokenizer(tmp_path / "no-kit"), steps=2)
    cfg = load_train_config(str(config))  # the entry point's loader: schema, ranges, packing, NeMo's checks
    assert (cfg.model.transformer_impl, cfg.model.precision, cfg.data.packing) == ("local", "bf16", True)
    assert cfg.optim.distributed_optimizer is False and cfg.model.num_layers == 16
    lo, hi = 512 // 5, 512 // 4
    assert all(lo < n <= hi for n in lengths)  # so each packed row holds exactly 4 samples


@pytest.mark.slow
def test_parity_cpu_half_trains_from_the_common_checkpoint(tmp_path):
    """The init run and the fp32 CPU run exactly as the parity step launches them (the GPU run
    differs only in CUDA_VISIBLE_DEVICES): per-step loss and grad norm, same samples per step."""
    import gpu_check
    from nemo_erprm.training.checkpoints import last_checkpoint

    recipe = REPO / gpu_run.PARITY_RECIPE
    init = gpu_check.run_training("init", gpu_run.init_run(tmp_path, gpu_run.kit_tokenizer(tmp_path / "no-kit")),
                                  recipe, tmp_path, 600)
    assert init["returncode"] == 0, init.get("log_tail")
    ckpt = last_checkpoint(tmp_path / "runs" / "init")
    assert ckpt is not None
    runs = gpu_run.parity_runs(tmp_path, ckpt, steps=3)
    assert runs["fp32_gpu"]["overrides"][1:] == runs["fp32_cpu"]["overrides"][1:]  # only the name differs
    assert (runs["fp32_cpu"]["gpus"], runs["fp32_gpu"]["gpus"]) == (0, 1)
    cpu = gpu_check.run_training("fp32_cpu", runs["fp32_cpu"], recipe, tmp_path, 600)
    assert gpu_check.run_ok(cpu, 3) is None, cpu.get("log_tail")
    assert all(g is not None and g > 0 for g in cpu["grad_norm"]) and set(cpu["sample_ids"]) == {1, 2, 3}
    same = gpu_check.parity("cuda_fp32_parity", cpu, cpu, 3, 1e-4, 1e-4)
    assert same["status"] == "passed"
    moved = {**cpu, "loss": [x * (1 + 2e-4) for x in cpu["loss"]]}
    assert gpu_check.parity("cuda_fp32_parity", moved, cpu, 3, 1e-4, 1e-4)["status"] == "failed"


def test_a_run_failing_after_its_last_step_is_compared_and_still_fails():
    run = {"steps": 3, "loss": [0.7, 0.6, 0.5], "grad_norm": [1.0, 0.9, 0.8], "error": "exit status 1",
           "log_tail": "AssertionError in sharded_param_state_dp_reshardable", "sample_ids": {}}
    kept, check = gpu_run.split_exit_failure("bf16_distopt_gpu", run, 3)
    assert kept["error"] is None and kept["loss"] == run["loss"]
    assert check["check"] == "bf16_distopt_gpu_exit" and check["status"] == "failed"
    assert "dp_reshardable" in check["detail"]
    short = {**run, "steps": 2, "loss": [0.7, 0.6]}  # died mid-run: no comparison to rescue
    assert gpu_run.split_exit_failure("x", short, 3) == (short, None)
    assert gpu_run.step_failed({"checks": [check]}) and not gpu_run.step_failed({"checks": []})
