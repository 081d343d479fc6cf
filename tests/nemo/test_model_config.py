"""YAML `model:` section -> NeMo PRM config objects, and the TE/FP8 switch."""

import pytest
from omegaconf import OmegaConf

from nemo_erprm.errors import ConfigError
from nemo_erprm.model.build import have_transformer_engine
from tests.tiny_models import build_tokenizer

REPO_CONF = __import__("pathlib").Path(__file__).resolve().parents[2] / "conf" / "model"


def load(text_or_path, **over):
    from nemo_erprm.nemo.model_config import ModelConfig

    raw = OmegaConf.load(text_or_path) if not isinstance(text_or_path, dict) else OmegaConf.create(text_or_path)
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), raw.get("model", raw), over)
    return OmegaConf.to_object(merged)


def test_yaml_to_nemo_config(shared_data):
    from nemo_erprm.nemo.config import ERPRMLlamaConfig
    from nemo_erprm.nemo.model_config import build_erprm_config, build_precision_plugin

    tok = build_tokenizer()
    cfg = load(REPO_CONF / "smollm2_135m_cpu.yaml", pipeline_model_parallel_size=2,
               virtual_pipeline_model_parallel_size=3)
    nemo_cfg = build_erprm_config(cfg, tok)
    assert isinstance(nemo_cfg, ERPRMLlamaConfig)
    assert (nemo_cfg.num_layers, nemo_cfg.hidden_size, nemo_cfg.num_query_groups) == (30, 576, 3)
    assert nemo_cfg.tensor_model_parallel_size == 1 and nemo_cfg.pipeline_model_parallel_size == 2
    assert nemo_cfg.virtual_pipeline_model_parallel_size == 3
    assert nemo_cfg.plus_token_id == tok.convert_tokens_to_ids("+")
    assert nemo_cfg.recompute_granularity == "full" and nemo_cfg.calculate_per_token_loss
    assert not nemo_cfg.apply_rope_fusion or have_transformer_engine()
    plugin = build_precision_plugin(cfg)
    assert plugin.dtype_config.fp8 is None
    # megatron's own checks surface as config errors naming the section
    with pytest.raises(ConfigError, match=r"model: num_attention_heads \(9\) must be a multiple"):
        build_erprm_config(load(REPO_CONF / "smollm2_135m_cpu.yaml", tensor_model_parallel_size=2), tok)


def test_fp8_needs_the_te_spec():
    with pytest.raises(ConfigError, match="model: fp8='hybrid' needs transformer_impl=transformer_engine"):
        load({"model": {"fp8": "hybrid", "transformer_impl": "local"}}).validate()


@pytest.mark.skipif(have_transformer_engine(), reason="Transformer Engine is installed here")
def test_te_spec_without_te_is_a_clear_error():
    cfg = load(REPO_CONF / "mistral_7b_h100_fp8.yaml")
    with pytest.raises(ConfigError, match="needs Transformer Engine"):
        cfg.validate()


@pytest.mark.parametrize(
    "over, message",
    [
        ({"family": "bert"}, "model.family must be one of"),
        ({"head": "value"}, "model.head must be one of"),
        ({"precision": "fp64"}, "model.precision must be one of"),
        ({"virtual_pipeline_model_parallel_size": 2}, "needs pipeline_model_parallel_size >= 2"),
        ({"sequence_parallel": True}, "sequence_parallel needs tensor_model_parallel_size >= 2"),
        ({"fp8_recipe": "magic"}, "fp8_recipe must be one of"),
    ],
)
def test_bad_values(over, message):
    with pytest.raises(ConfigError, match=message):
        load({"model": over}).validate()


def test_label_tokens_must_be_single_tokens(shared_data):
    from nemo_erprm.nemo.model_config import build_erprm_config

    with pytest.raises(ConfigError, match="model.plus_token='good step' is not a single token"):
        build_erprm_config(load({"model": {"plus_token": "good step", "num_layers": 2}}), build_tokenizer())
