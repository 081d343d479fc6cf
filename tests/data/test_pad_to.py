"""Micro-batch width: padded to the longest row (rounded up to what the layout needs) by
default, to seq_length with data.pad_to=max_length or pipeline parallelism; same loss."""

import pytest
import torch

from nemo_erprm.data.collate import collate_rows, pad_multiple, pad_width
from nemo_erprm.errors import ConfigError

SEQ, VOCAB = 64, 256


def samples(lengths):
    g = torch.Generator().manual_seed(5)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(5, VOCAB, (n,), generator=g).tolist()
        tags = sorted(torch.randperm(n, generator=g)[:2].tolist())
        out.append({"input_ids": ids, "tag_positions": tags, "targets": torch.rand(2, generator=g).tolist(),
                    "sample_index": i})
    return out


def test_pad_multiple_covers_fp8_sequence_and_context_parallel():
    assert pad_multiple() == 16
    assert pad_multiple(2, sequence_parallel=False) == 16  # TP without SP does not split the sequence
    assert pad_multiple(3, sequence_parallel=True) == 48
    assert pad_multiple(8, sequence_parallel=True) == 16
    assert pad_multiple(1, context_parallel=16) == 32


def test_width_is_the_longest_row_rounded_up_never_past_seq_length():
    assert pad_width([20, 13], SEQ, 16) == 32
    assert pad_width([32, 1], SEQ, 16) == 32
    assert pad_width([60], SEQ, 48) == SEQ  # rounded up past seq_length: seq_length
    assert pad_width([20, 13], SEQ, None) == SEQ  # max_length
    data = samples([20, 13])
    longest = collate_rows([[s] for s in data], SEQ, 0, pad_multiple=16)
    assert longest["tokens"].shape == (2, 32) and longest["attention_mask"].shape == (2, 1, 32, 32)
    sp3 = collate_rows([[s] for s in data], SEQ, 0, pad_multiple=pad_multiple(3, True))
    assert sp3["tokens"].shape == (2, 48)
    packed = collate_rows([[data[0], data[1]]], SEQ, 0, pad_multiple=16)  # a packed row: 33 tokens
    assert packed["tokens"].shape == (1, 48) and packed["cu_seqlens"][0, :4].tolist() == [0, 20, 33, 48]


def test_longest_is_the_full_width_batch_cut_at_the_width():
    data = samples([20, 13, 7])
    rows = [[data[0]], [data[1], data[2]]]
    full = collate_rows(rows, SEQ, 0)
    cut = collate_rows(rows, SEQ, 0, pad_multiple=16)
    w = cut["tokens"].shape[1]
    assert full["tokens"].shape[1] == SEQ and w == 32
    for key in ("tokens", "position_ids", "step_mask", "step_targets", "step_sample"):
        assert torch.equal(cut[key], full[key][:, :w]), key
    assert torch.equal(cut["attention_mask"], full["attention_mask"][:, :, :w, :w])
    assert torch.equal(cut["num_tokens"], full["num_tokens"])
    assert not full["step_mask"][:, w:].any()  # nothing but padding was cut


@pytest.mark.parametrize("head", ["lm_tokens", "scalar"])
def test_longest_and_max_length_give_the_same_step_losses(megatron_cpu, head):
    from nemo_erprm.model.build import build_prm_model
    from nemo_erprm.model.loss import step_losses
    from tests.conftest import tiny_transformer_config

    model = build_prm_model(tiny_transformer_config(), VOCAB, SEQ, head=head, plus_token_id=3, minus_token_id=4)
    data = samples([20, 13, 30])
    rows = [[data[0], data[1]], [data[2]]]
    losses = []
    for multiple in (None, 16):
        batch = collate_rows(rows, SEQ, 0, pad_multiple=multiple)
        out = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], step_mask=batch["step_mask"])
        loss = step_losses(out, batch["step_targets"][batch["step_mask"]], head).sum()
        model.zero_grad()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        losses.append((loss.item(), grads))
    (full_loss, full_grad), (cut_loss, cut_grad) = losses
    assert abs(full_loss - cut_loss) < 1e-5
    assert torch.allclose(full_grad, cut_grad, atol=1e-6, rtol=1e-5)


def test_pipeline_parallel_pads_to_max_length_and_bad_values_are_refused():
    from nemo_erprm.training.effective import effective_pad_to
    from nemo_erprm.training.config import TrainConfig, load_train_config

    cfg = TrainConfig()
    assert cfg.data.pad_to == "longest" and effective_pad_to(cfg) == "longest"
    cfg.model.pipeline_model_parallel_size = 2
    assert effective_pad_to(cfg) == "max_length"
    cfg.data.pad_to = "max_length"
    cfg.model.pipeline_model_parallel_size = 1
    assert effective_pad_to(cfg) == "max_length"
    with pytest.raises(ConfigError, match="data.pad_to='shortest'"):
        load_train_config("conf/tiny_cpu.yaml", ["data.pad_to=shortest"])
