"""The ER loss against independent computations, and the heads against megatron's own LM."""

import math

import pytest
import torch
import torch.nn.functional as F

from nemo_erprm.errors import ConfigError
from nemo_erprm.model.loss import metrics_from_stats, step_losses, step_scores, step_stats
from tests.conftest import tiny_transformer_config

VOCAB, SEQ = 256, 32


def test_lm_tokens_loss_is_soft_target_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 2, generator=g, dtype=torch.float64) * 3
    y = torch.rand(50, generator=g, dtype=torch.float64)
    ours = step_losses(logits.float(), y.float(), "lm_tokens")
    assert ours.dtype == torch.float32
    # torch's cross_entropy with class-probability targets: an independent implementation
    ref = F.cross_entropy(logits, torch.stack([y, 1 - y], dim=1), reduction="none")
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    # and the same thing by hand
    p_plus = torch.exp(logits[:, 0]) / (torch.exp(logits[:, 0]) + torch.exp(logits[:, 1]))
    by_hand = -(y * torch.log(p_plus) + (1 - y) * torch.log(1 - p_plus))
    torch.testing.assert_close(ours.double(), by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_scores(logits.float(), "lm_tokens").double(), p_plus, rtol=1e-5, atol=1e-6)


def test_scalar_loss_is_bce_with_logits():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, generator=g, dtype=torch.float64) * 4
    y = torch.rand(40, generator=g, dtype=torch.float64)
    ours = step_losses(z.float(), y.float(), "scalar")
    s = 1 / (1 + torch.exp(-z))
    ref = -(y * torch.log(s) + (1 - y) * torch.log(1 - s))
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_loss_is_float32_even_for_bf16_logits():
    logits = torch.randn(8, 2).bfloat16()
    assert step_losses(logits, torch.rand(8), "lm_tokens").dtype == torch.float32


def test_stats_give_mean_over_steps_and_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([1.0, 0.0, 0.2, 0.7])
    losses, stats = step_stats(logits, y, "lm_tokens")
    m = metrics_from_stats(stats)
    assert m["loss"] == pytest.approx(float(losses.mean()))
    scores = step_scores(logits, "lm_tokens")
    # score > 0.5 vs label > 0.5: right, right, wrong (0.73 vs 0.2), wrong (0.5 is not > 0.5 vs 0.7)
    assert m["step_accuracy"] == pytest.approx(0.5)
    assert m["step_mae"] == pytest.approx(float((scores - y).abs().mean()))
    assert m["positive_label_fraction"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="head must be one of"):
        step_losses(logits, y, "value")


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    pos = torch.arange(SEQ).expand(2, SEQ)
    mask = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1).expand(2, 1, SEQ, SEQ)
    step_mask = torch.zeros(2, SEQ, dtype=torch.bool)
    step_mask[0, [3, 10, 31]] = True
    step_mask[1, [7]] = True
    return ids, pos, mask, step_mask


@pytest.mark.parametrize("tied", [False, True])
def test_lm_tokens_head_equals_full_vocab_logits(megatron_cpu, tied):
    """Gathering hidden states before the head == megatron's full LM logits at the tags."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from nemo_erprm.model.build import build_prm_model

    cfg = tiny_transformer_config()
    prm = build_prm_model(cfg, VOCAB, SEQ, head="lm_tokens", plus_token_id=5, minus_token_id=200,
                          share_embeddings_and_output_weights=tied).eval()
    lm = GPTModel(cfg, get_gpt_layer_local_spec(normalization="RMSNorm"), VOCAB, SEQ,
                  share_embeddings_and_output_weights=tied, position_embedding_type="rope").eval()
    lm.load_state_dict(prm.state_dict(), strict=True)
    ids, pos, mask, step_mask = _batch()
    with torch.no_grad():
        ours = prm(ids, pos, mask, step_mask=step_mask)
        full = lm(ids, pos, mask)  # [b, s, vocab]
    ref = full[step_mask][:, [5, 200]]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_scalar_head_starts_near_half_and_freezes_untied_lm_head(megatron_cpu):
    from nemo_erprm.model.build import build_prm_model

    prm = build_prm_model(tiny_transformer_config(), VOCAB, SEQ, head="scalar")
    assert not prm.output_layer.weight.requires_grad
    assert all(p.requires_grad for p in prm.step_head.parameters())
    ids, pos, mask, step_mask = _batch()
    with torch.no_grad():
        scores = step_scores(prm(ids, pos, mask, step_mask=step_mask), "scalar")
    assert scores.shape == (4,) and (scores - 0.5).abs().max() < 0.1


def test_precision_switch_errors(megatron_cpu):
    from nemo_erprm.model.build import build_prm_model, check_precision_switch, have_transformer_engine

    with pytest.raises(ConfigError, match="fp8='hybrid' needs transformer_impl=transformer_engine"):
        check_precision_switch("local", "hybrid")
    with pytest.raises(ConfigError, match="fp8 must be one of"):
        check_precision_switch("transformer_engine", "e5m2")
    with pytest.raises(ConfigError, match="transformer_impl must be one of"):
        check_precision_switch("apex", None)
    with pytest.raises(ConfigError, match="the local spec would ignore it"):
        build_prm_model(tiny_transformer_config(fp8="hybrid"), VOCAB, SEQ, head="scalar")
    if not have_transformer_engine():
        with pytest.raises(ConfigError, match="needs Transformer Engine"):
            check_precision_switch("transformer_engine", None)


def _gpu_with_te() -> bool:
    from nemo_erprm.model.build import have_transformer_engine

    return torch.cuda.is_available() and have_transformer_engine()


@pytest.mark.skipif(not _gpu_with_te(), reason="Transformer Engine and a CUDA GPU are only in the GPU container")
def test_te_spec_with_fp8_builds():  # pragma: no cover - GPU only
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_erprm.model.build import build_prm_model
    from nemo_erprm.runtime.parallel import init_distributed

    init_distributed(1, 1)
    cfg = TransformerConfig(num_layers=2, hidden_size=128, num_attention_heads=4, ffn_hidden_size=256,
                            fp8="hybrid", params_dtype=torch.bfloat16, bf16=True)
    prm = build_prm_model(cfg, 1024, 64, head="lm_tokens", plus_token_id=1, minus_token_id=2,
                          transformer_impl="transformer_engine")
    names = {type(m).__name__ for m in prm.modules()}
    assert any(n.startswith("TE") for n in names), names
    assert math.isfinite(0.0)
