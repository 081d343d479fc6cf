"""Training configs: the paper recipes resolve with their hyper-parameters and H100 layouts;
bad values fail with the key named."""

from pathlib import Path

import pytest

from nemo_erprm.errors import ConfigError
from nemo_erprm.training.config import load_train_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["erprm_mistral_7b", "erprm_deepseek_math_7b", "erprm_llama3_8b", "erprm_qwen2.5_math_7b"]


@pytest.fixture
def existing(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "records.jsonl").write_text("{}\n")
    return [f"model.init_from={tmp_path / 'ckpt'}", f"data.train={tmp_path / 'records.jsonl'}",
            "model.transformer_impl=local"]  # no Transformer Engine on CPU machines


@pytest.mark.parametrize("recipe", RECIPES)
def test_paper_recipes(recipe, existing):
    cfg = load_train_config(str(REPO / "conf" / f"{recipe}.yaml"), existing)
    assert cfg.optim.lr == 1e-6 and cfg.data.global_batch_size == 64 and cfg.model.seq_length == 512
    assert cfg.trainer.max_epochs == 1 and 0 < cfg.optim.warmup_ratio < 0.1
    assert cfg.model.head == "lm_tokens" and cfg.model.step_tag == "ки"
    layout = cfg.model.tensor_model_parallel_size * cfg.model.pipeline_model_parallel_size
    assert 8 % layout == 0 and (64 // (8 // layout)) % cfg.data.micro_batch_size == 0
    assert cfg.data.eta == (10 if "deepseek" in recipe or "qwen" in recipe else 2)
    assert cfg.model.fp8 is None  # FP8 is one toggle away (model.fp8=hybrid)


def test_fp8_recipe_without_transformer_engine_is_refused(existing):
    with pytest.raises(ConfigError, match="fp8"):
        load_train_config(str(REPO / "conf" / "erprm_mistral_7b.yaml"), existing + ["model.fp8=hybrid"])


def test_bad_values_name_the_key(existing, tmp_path):
    with pytest.raises(ConfigError, match="optim.lr"):
        load_train_config(str(REPO / "conf" / "erprm_mistral_7b.yaml"), existing + ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="data.train"):
        load_train_config(str(REPO / "conf" / "tiny_cpu.yaml"), [f"data.train={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(ConfigError, match="global_batch_size"):
        load_train_config(str(REPO / "conf" / "tiny_cpu.yaml"), ["data.global_batch_size=5"])
    with pytest.raises(ConfigError, match="no such file"):
        load_train_config(str(tmp_path / "nope.yaml"))


def test_export_subprocess_gets_no_launcher_ranks():
    from nemo_erprm.training.launch import single_process_env

    launched = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "29500", "SLURM_PROCID": "1",
                "TORCHELASTIC_RUN_ID": "x", "PATH": "/bin", "SLURM_JOB_ID": "7"}
    assert single_process_env(launched) == {"PATH": "/bin", "SLURM_JOB_ID": "7"}


def test_num_nodes_follows_slurm(monkeypatch, existing):
    from nemo_erprm.training.launch import num_nodes

    cfg = load_train_config(str(REPO / "conf" / "erprm_mistral_7b.yaml"), existing)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert num_nodes(cfg) == 2  # the README's `sbatch --nodes=2` line: Lightning refuses num_nodes=1 there
    cfg.trainer.num_nodes = 4
    with pytest.raises(ConfigError, match="trainer.num_nodes=4 but the Slurm job has 2 nodes"):
        num_nodes(cfg)
    monkeypatch.delenv("SLURM_JOB_ID")
    assert num_nodes(cfg) == 4


@pytest.mark.parametrize("packing", [False, True])
def test_rope_fusion_off_gives_its_real_reason(existing, packing):
    """A family with fused RoPE on by default, run with the local spec: the effective settings
    say why it is off. Packed rows are a reason of their own (per-row positions), not TE."""
    from megatron.core.distributed import DistributedDataParallelConfig

    from nemo_erprm.model.build import have_transformer_engine
    from nemo_erprm.nemo.config import ERPRMLlamaConfig
    from nemo_erprm.training.effective import effective_settings

    cfg = load_train_config(str(REPO / "conf" / "erprm_mistral_7b.yaml"), existing + [f"data.packing={packing}"])
    prm = ERPRMLlamaConfig(num_layers=2, hidden_size=64, num_attention_heads=4, apply_rope_fusion=False)
    ddp = DistributedDataParallelConfig()
    why = effective_settings(cfg, prm, ddp, False, 1, 1)["changed"]["apply_rope_fusion"]
    assert ("data.packing=true" in why) is packing, why
    assert ("needs Transformer Engine" in why) is not have_transformer_engine(), why
