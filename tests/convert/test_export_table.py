"""Every PRM config family maps to NeMo's HF exporter of its backbone, and that exporter
translates it: Llama-3.0 (no RoPE scaling) and Llama-3.1/3.2 (``rope_scaling`` of type llama3,
every factor) included, which are not subclasses of ``ERPRMLlamaConfig``.

The exporters run for real (NeMo 2.7.3's ``HFLlamaExporter`` / ``HFMistralExporter`` /
``HFQwen2Exporter``.config) on an io context dumped the way NeMo dumps a checkpoint's
(``TrainerContext.io_dump``); no weights are needed for the config. The full convert -> export
round trip of a Llama with llama3 RoPE scaling is ``test_llama3_export.py``."""

from __future__ import annotations

import pytest

# config class -> the HF model_type its export must have; ERPRMGPTConfig has no HF architecture
EXPORTED = {"ERPRMLlamaConfig": "llama", "ERPRMLlama3Config": "llama", "ERPRMLlama31Config": "llama",
            "ERPRMMistralConfig": "mistral", "ERPRMQwen2Config": "qwen2"}
NOT_EXPORTED = {"ERPRMGPTConfig"}
TINY = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
            seq_length=128, plus_token_id=5, minus_token_id=6)
# non-default llama3 factors (NeMo's defaults are 8, 1, 4, 8192): each must reach config.json
LLAMA3_ROPE = dict(scale_factor=4.0, low_freq_factor=2.0, high_freq_factor=8.0, old_context_len=64)


def config_classes() -> dict[str, type]:
    from nemo_erprm.nemo import config as C

    return {name: obj for name, obj in vars(C).items()
            if isinstance(obj, type) and issubclass(obj, C.ERPRMConfigMixin) and obj is not C.ERPRMConfigMixin}


def test_every_prm_config_class_has_an_exporter_or_a_stated_reason():
    from nemo_erprm.convert.prm_to_hf import HF_EXPORTERS, NO_HF_EXPORT
    from nemo_erprm.nemo import config as C

    classes = config_classes()
    assert set(C.FAMILIES.values()) <= set(classes.values())
    assert set(classes) == set(EXPORTED) | NOT_EXPORTED  # a new family needs a row here and in the table
    assert set(HF_EXPORTERS) == set(EXPORTED) and set(NO_HF_EXPORT) == NOT_EXPORTED
    # why the table is keyed by exact class: the Llama-3 configs derive from NeMo's Llama3Config
    assert not issubclass(C.ERPRMLlama31Config, C.ERPRMLlamaConfig)
    assert not issubclass(C.ERPRMLlama3Config, C.ERPRMLlamaConfig)


@pytest.fixture(scope="module")
def dump_context(tmp_path_factory, shared_data):
    """``dump(cfg) -> checkpoint dir`` holding only ``context/`` (config + NeMo tokenizer)."""
    from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

    enable_cpu_backend()
    import nemo.lightning as nl
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer
    from nemo.lightning.io.pl import TrainerContext

    from nemo_erprm.nemo.model import ERPRMModel
    from tests.tiny_models import build_tokenizer

    root = tmp_path_factory.mktemp("contexts")
    build_tokenizer().save_pretrained(root / "tokenizer")
    tokenizer = AutoTokenizer(str(root / "tokenizer"))
    trainer = nl.Trainer(devices=1, accelerator="cpu", strategy=nl.MegatronStrategy(), logger=False)

    def dump(cfg):
        ckpt = root / type(cfg).__name__
        ctx = TrainerContext(model=ERPRMModel(cfg, tokenizer=tokenizer), trainer=trainer, extra={})
        ctx.io_dump(ckpt / "context", yaml_attrs=["model"])
        return ckpt

    return dump


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_each_family_exports_its_hf_config(dump_context, name):
    from transformers import AutoModelForCausalLM

    from nemo_erprm.convert.prm_to_hf import hf_config_for
    from nemo_erprm.nemo import config as C

    extra = LLAMA3_ROPE if name == "ERPRMLlama31Config" else {}
    cfg = getattr(C, name)(**TINY, **extra)
    hf_cfg = hf_config_for(dump_context(cfg), cfg, vocab_rows=520)
    assert hf_cfg.model_type == EXPORTED[name]
    shape = (hf_cfg.num_hidden_layers, hf_cfg.hidden_size, hf_cfg.num_key_value_heads, hf_cfg.vocab_size)
    assert shape == (2, 64, 2, 520)
    scaling = getattr(hf_cfg, "rope_scaling", None)  # MistralConfig has no such field
    if name == "ERPRMLlama31Config":
        assert {k: scaling[k] for k in ("rope_type", "factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")} == {
            "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
            "original_max_position_embeddings": 64}
    else:
        assert scaling is None  # Llama-3.0's Llama3Config applies no RoPE scaling; nor do the others
    AutoModelForCausalLM.from_config(hf_cfg)  # transformers accepts the config as written


def test_a_family_without_hf_architecture_is_one_clear_error(dump_context):
    from nemo_erprm.convert.prm_to_hf import hf_config_for
    from nemo_erprm.errors import ConfigError
    from nemo_erprm.nemo.config import ERPRMGPTConfig

    cfg = ERPRMGPTConfig(**TINY)
    with pytest.raises(ConfigError, match="no HF exporter for ERPRMGPTConfig: a generic GPT backbone"):
        hf_config_for(dump_context(cfg), cfg, vocab_rows=520)
