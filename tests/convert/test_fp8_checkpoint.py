"""A checkpoint whose context records a GPU run (FP8, TE spec, sequence parallel, THD) loads,
scores and exports on CPU; and a run's settings reach its checkpoints' io context.

The GPU-trained checkpoint is made the way training makes one: NeMo's precision plugin writes
FP8 into the config (``update_config_with_dtype_overrides``), ``training.model_setup.build_prm_config``'s
field setter writes the TE spec and layout, and NeMo's ``TrainerContext`` dumps the context.
The weights are those of a converted tiny Llama, so scores must equal the original's exactly.

A stand-in for a checkpoint Transformer Engine trained: converted weights with an edited io
context, never trained with TE, so its layers hold no TE ``_extra_state`` (FP8 scaling state);
TE needs CUDA and is never installed here. The real check, a TE FP8 run's own checkpoint loaded
through the local spec, the TE spec and its HF export, is ``benchmarks/gpu_check.py``'s
``fp8_checkpoint``.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_models import build_tiny_hf

REPO = Path(__file__).resolve().parents[2]
CONVERT = REPO / "tools" / "convert_hf_checkpoint.py"
EXPORT = REPO / "tools" / "export_hf_checkpoint.py"
GPU_RUN = dict(transformer_impl="transformer_engine", sequence_parallel=True, tensor_model_parallel_size=2,
               recompute_granularity="selective", packed_attention=True)

pytestmark = pytest.mark.slow


def run(cmd):
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, shared_data, megatron_cpu):
    """(hf_dir, converted ckpt, the same weights with a GPU-trained FP8 context)."""
    import nemo.lightning as nl
    from nemo.lightning.io import load_context
    from nemo.lightning.pytorch.plugins.mixed_precision import update_config_with_dtype_overrides

    from nemo_erprm.nemo.model_config import set_config_fields

    root = tmp_path_factory.mktemp("fp8")
    hf, ckpt, fp8 = root / "hf", root / "prm", root / "prm_fp8"
    build_tiny_hf(hf, "llama")
    run([CONVERT, "--hf-dir", hf, "--out", ckpt])
    ctx = load_context(str(ckpt / "context"))
    plugin = nl.MegatronMixedPrecision(precision="bf16-mixed", fp8="hybrid", fp8_recipe="delayed")
    update_config_with_dtype_overrides(plugin.dtype_config, ctx.model.config)
    set_config_fields(ctx.model.config, **GPU_RUN)
    shutil.copytree(ckpt / "weights", fp8 / "weights")
    shutil.copy(ckpt / "prm_config.json", fp8)
    ctx.io_dump(str(fp8 / "context"), yaml_attrs=["model"])
    saved = load_context(str(fp8 / "context"), subpath="model").config
    assert (saved.fp8, saved.transformer_impl, saved.sequence_parallel) == ("hybrid", "transformer_engine", True)
    return hf, ckpt, fp8


def _step_logits(ckpt):
    from nemo_erprm.convert.load import load_prm_modules
    from nemo_erprm.data.collate import collate_rows
    from nemo_erprm.model.megatron_step import forward_outputs

    modules, cfg, _ = load_prm_modules(ckpt, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    # widths 13 and 7: not multiples of 8, what TE's FP8 GEMMs refuse (assert_dim_for_fp8_exec)
    rows = [[{"input_ids": torch.randint(5, 200, (n,), generator=g).tolist(), "tag_positions": [2, n - 1],
              "targets": [0.5, 0.5]}] for n in (13, 7)]
    batches = [collate_rows([r], 16, 0) for r in rows]
    return cfg, forward_outputs(modules, batches, 16, 1)


def test_fp8_trained_checkpoint_scores_on_cpu_like_the_original(checkpoints):
    _, ckpt, fp8 = checkpoints
    cfg, ours = _step_logits(fp8)
    assert (cfg.fp8, cfg.transformer_impl, cfg.sequence_parallel, cfg.packed_attention) == (None, "local", False, False)
    _, original = _step_logits(ckpt)
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, original))


def test_fp8_trained_checkpoint_exports_to_the_same_hf_weights(checkpoints, tmp_path):
    from safetensors.torch import load_file

    hf, _, fp8 = checkpoints
    run([EXPORT, "--ckpt", fp8, "--out", tmp_path / "hf"])
    a, b = load_file(hf / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert set(a) == set(b) and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_run_settings_reach_the_checkpoint_context(checkpoints, monkeypatch):
    """build_prm_config (model.init_from) writes this run's settings into the io context that
    every checkpoint of the run saves; a plain setattr left the init checkpoint's there."""
    import nemo_erprm.model.build as build
    from nemo_erprm.training.model_setup import build_prm_config
    from nemo_erprm.training.config import load_train_config

    monkeypatch.setattr(build, "have_transformer_engine", lambda: True)
    _, ckpt, _ = checkpoints
    cfg = load_train_config(str(REPO / "conf" / "erprm_llama3_8b.yaml"),
                            [f"model.init_from={ckpt}", "model.fp8=hybrid"], validate=False)
    prm = build_prm_config(cfg, None)
    io = prm.__io__
    assert (io.transformer_impl, io.fp8, io.sequence_parallel, io.tensor_model_parallel_size) == (
        "transformer_engine", "hybrid", True, 2)
    assert io.packed_attention is True and io.recompute_granularity == "selective" and io.bf16 is True
