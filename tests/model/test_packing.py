"""Packing several samples per row computes exactly what each sample computes alone."""

import pytest
import torch

from nemo_erprm.data.collate import collate_rows, pack_rows
from nemo_erprm.model.loss import step_losses
from tests.conftest import tiny_transformer_config

SEQ, VOCAB = 64, 256


def samples():
    g = torch.Generator().manual_seed(3)
    out = []
    for i, n in enumerate([20, 13, 25, 9, 30, 17]):
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        tags = sorted(torch.randperm(n, generator=g)[:3].tolist())
        out.append({"input_ids": ids, "tag_positions": tags, "targets": torch.rand(3, generator=g).tolist(),
                    "sample_index": i})
    return out


def per_sample_losses(model, head, batch):
    with torch.no_grad():
        out = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], step_mask=batch["step_mask"])
    losses = step_losses(out, batch["step_targets"][batch["step_mask"]], head)
    owners = batch["step_sample"][batch["step_mask"]]
    return {int(i): losses[owners == i].sum().item() for i in owners.unique()}


@pytest.mark.parametrize("head", ["lm_tokens", "scalar"])
def test_packing_on_off_same_per_sample_loss(megatron_cpu, head):
    from nemo_erprm.model.build import build_prm_model

    model = build_prm_model(tiny_transformer_config(), VOCAB, SEQ, head=head, plus_token_id=3, minus_token_id=4).eval()
    data = samples()
    lengths = [len(s["input_ids"]) for s in data]
    packed_rows = pack_rows(lengths, SEQ, packing=True)
    assert len(packed_rows) < len(data) and any(len(r) > 1 for r in packed_rows)
    unpacked = per_sample_losses(model, head, collate_rows([[s] for s in data], SEQ, 0))
    packed = per_sample_losses(model, head, collate_rows([[data[i] for i in r] for r in packed_rows], SEQ, 0))
    assert unpacked.keys() == packed.keys() == set(range(len(data)))
    for i in unpacked:
        assert packed[i] == pytest.approx(unpacked[i], abs=1e-5)

    # Negative control: a plain causal mask over the row (samples see their predecessors)
    # changes the result. (Restarting positions alone would not: RoPE is shift-invariant.)
    batch = collate_rows([[data[i] for i in r] for r in packed_rows], SEQ, 0)
    batch["attention_mask"] = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1).expand_as(batch["attention_mask"])
    wrong = per_sample_losses(model, head, batch)
    moved = [i for r in packed_rows for i in r[1:]]  # samples not at the start of their row
    assert max(abs(wrong[i] - unpacked[i]) for i in moved) > 1e-4


def test_pack_rows_is_ordered_next_fit():
    assert pack_rows([30, 30, 10, 40], 64, packing=True) == [[0, 1], [2, 3]]
    assert pack_rows([5, 5], 64, packing=False) == [[0], [1]]
    with pytest.raises(ValueError, match="seq_length"):
        pack_rows([65], 64, packing=True)


def test_collate_masks_and_padding():
    data = samples()[:2]
    b = collate_rows([[data[0], data[1]]], SEQ, pad_id=0)
    n0, n1 = len(data[0]["input_ids"]), len(data[1]["input_ids"])
    mask = b["attention_mask"][0, 0]  # True = masked
    assert not mask[n0, n0] and mask[n0, n0 - 1]  # sample 2 cannot see sample 1
    assert not mask[n0 + 1, n0] and mask[n0, n0 + 1]  # causal inside sample 2
    assert b["position_ids"][0, n0].item() == 0
    assert b["step_mask"].sum().item() == 6 and b["step_targets"].dtype == torch.float32
    assert b["cu_seqlens"][0, :4].tolist() == [0, n0, n0 + n1, SEQ]
    assert b["cu_seqlens"][0, int(b["cu_seqlens_argmin"][0])].item() == -1
