"""GPU-path settings checked on CPU: Llama-3.1 RoPE scaling, FP8 recipe vs GPU generation,
packed attention under the TE spec (THD), each refused with the key named."""

from pathlib import Path

import pytest
import torch

from nemo_erprm.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = dict(num_layers=1, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
            seq_length=64, vocab_size=256)


def test_llama31_rope_scaling_is_applied(megatron_cpu):
    """ERPRMLlama31Config's model has the inv_freq of NeMo's own Llama31Config model (llama3
    RoPE scaling); the mixin's configure_model used to skip it (up to 8x off)."""
    from nemo.collections.llm.gpt.model.llama import Llama31Config

    from nemo_erprm.nemo.config import ERPRMLlama31Config, ERPRMLlama3Config

    from megatron.core.transformer.enums import AttnBackend

    theirs = Llama31Config(**TINY, attention_backend=AttnBackend.local).configure_model(None).rotary_pos_emb.inv_freq
    ours = ERPRMLlama31Config(**TINY, plus_token_id=1, minus_token_id=2).configure_model(None)
    unscaled = ERPRMLlama3Config(**TINY, plus_token_id=1, minus_token_id=2).configure_model(None)
    torch.testing.assert_close(ours.rotary_pos_emb.inv_freq, theirs, rtol=0, atol=0)
    ratio = unscaled.rotary_pos_emb.inv_freq / theirs
    assert ratio.max().item() == pytest.approx(8.0) and ratio.min().item() == pytest.approx(1.0)


@pytest.fixture
def te_installed(monkeypatch):
    """Pretend Transformer Engine is installed (the settings checks, not TE itself, are tested)."""
    import nemo_erprm.model.build as build

    monkeypatch.setattr(build, "have_transformer_engine", lambda: True)


def _model(**over):
    from nemo_erprm.nemo.model_config import ModelConfig

    return ModelConfig(**{"transformer_impl": "transformer_engine", **over})


@pytest.mark.parametrize("capability, refused", [((9, 0), True), ((8, 9), True), ((10, 0), False), (None, False)],
                         ids=["hopper", "ada", "blackwell", "no_gpu"])
def test_mxfp8_needs_blackwell(te_installed, monkeypatch, capability, refused):
    import nemo_erprm.nemo.model_config as mc

    monkeypatch.setattr(mc, "gpu_compute_capability", lambda: capability)
    cfg = _model(fp8="hybrid", fp8_recipe="mxfp8")
    if refused:
        with pytest.raises(ConfigError, match=r"model.fp8_recipe=mxfp8 needs a Blackwell GPU .* this GPU is "
                                              rf"sm_{capability[0]}{capability[1]}: use model.fp8_recipe=delayed"):
            cfg.validate()
    else:
        cfg.validate()
    _model(fp8="hybrid", fp8_recipe="delayed").validate()  # other recipes unaffected


def _train_config(**model_over):
    from nemo_erprm.training.config import TrainConfig

    cfg = TrainConfig()
    cfg.model = type(cfg.model)(**{"tokenizer": "smollm2", **model_over})
    cfg.data.train = str(REPO / "conf" / "tiny_cpu.yaml")  # any existing file: only settings are checked
    return cfg


def test_te_spec_with_packing_uses_thd_and_refuses_without(te_installed):
    cfg = _train_config(transformer_impl="transformer_engine")
    assert cfg.validate().model.uses_thd(packing=True) and not cfg.model.uses_thd(packing=False)
    assert not _train_config().model.uses_thd(packing=True)  # local spec: the block-diagonal mask
    with pytest.raises(ConfigError, match=r"model.packed_attention=false with model.transformer_impl="
                                          r"transformer_engine and data.packing=true: .* attend to each other"):
        _train_config(transformer_impl="transformer_engine", packed_attention=False).validate()
    cfg = _train_config(transformer_impl="transformer_engine", packed_attention=False)
    cfg.data.packing = False
    cfg.validate()  # unpacked rows: nothing to separate
    with pytest.raises(ConfigError, match="model.packed_attention=true .* needs model.transformer_impl="
                                          "transformer_engine"):
        _train_config(packed_attention=True).validate()


def test_thd_with_pipeline_parallelism_takes_one_row_per_micro_batch(te_installed):
    cfg = _train_config(transformer_impl="transformer_engine", pipeline_model_parallel_size=2)
    cfg.data.micro_batch_size, cfg.data.global_batch_size = 2, 8
    with pytest.raises(ConfigError, match=r"data.micro_batch_size=2 with THD attention .* "
                                          r"model.pipeline_model_parallel_size=2.*set data.micro_batch_size=1"):
        cfg.validate()
    cfg.data.micro_batch_size = 1
    cfg.validate()


def test_recipes_validate_with_thd(te_installed, monkeypatch):
    """The shipped recipes (TE spec, packing) resolve to THD attention and pass validation."""
    from nemo_erprm.training.config import load_train_config

    for recipe in sorted((REPO / "conf").glob("erprm_*.yaml")):
        cfg = load_train_config(str(recipe), validate=False)
        assert cfg.model.transformer_impl == "transformer_engine" and cfg.data.packing, recipe.name
        cfg.model.init_from, cfg.model.tokenizer = None, "smollm2"
        cfg.data.train = str(recipe)
        assert cfg.validate().model.uses_thd(cfg.data.packing), recipe.name
