"""RoPE and attention paths of the training forward step, and the lm_tokens product in fp32.

- one sample per row: the shared RoPE table [s, 1, 1, d] (the only form TE's fused RoPE takes);
- rows packing several samples under the local spec: per-row positions, refused with fused RoPE;
- THD (TE spec + packing): the micro-batch as one row with offset boundaries, built on the host
  and kept on the compute device. TE attention itself runs only on a GPU
  (benchmarks/gpu_check.py); megatron's RoPE for THD runs here.
"""

import pytest
import torch

from nemo_erprm.data.collate import collate_rows
from tests.conftest import tiny_transformer_config

SEQ, VOCAB = 32, 256


def _samples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        tags = sorted(torch.randperm(n, generator=g)[:2].tolist())
        out.append({"input_ids": torch.randint(0, VOCAB, (n,), generator=g).tolist(), "tag_positions": tags,
                    "targets": torch.rand(2, generator=g).tolist(), "sample_index": i})
    return out


class _NeMoLike(torch.nn.Module):
    """What NeMo hands the forward step: a module with ``.config`` calling the megatron model."""

    def __init__(self, module):
        super().__init__()
        self.module, self.config = module, module.config

    def forward(self, input_ids, position_ids, attention_mask=None, step_mask=None, packed_seq_params=None):
        return self.module(input_ids, position_ids, attention_mask, step_mask=step_mask,
                           packed_seq_params=packed_seq_params)


def _data_step(batch):
    from nemo_erprm.nemo.steps import erprm_data_step

    return erprm_data_step(iter([batch]))


def _record_rotary(model):
    seen = []
    original = model.decoder.forward

    def forward(*args, **kwargs):
        seen.append(kwargs["rotary_pos_emb"])
        return original(*args, **kwargs)

    model.decoder.forward = forward
    return seen


def test_lm_tokens_product_is_float32(megatron_cpu):
    from nemo_erprm.model.heads import LMTokensHead

    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(7, 64, generator=g) * 4).bfloat16()
    weight = (torch.randn(VOCAB, 64, generator=g) * 4).bfloat16()
    logits = LMTokensHead(5, 200, VOCAB)(hidden, weight)
    assert logits.dtype == torch.float32
    ref = hidden.double() @ weight[[5, 200]].double().t()  # exact products of the bf16 values
    torch.testing.assert_close(logits.double(), ref, rtol=1e-6, atol=1e-4)


def test_unpacked_rows_use_the_shared_rope_table(megatron_cpu):
    """Rows of one sample: freqs [s, 1, 1, d] reach the decoder (TE's fused RoPE requires
    freqs.size(1) == 1), and the step logits equal the per-row-positions forward."""
    from nemo_erprm.model.build import build_prm_model
    from nemo_erprm.nemo.steps import erprm_forward_step

    prm = build_prm_model(tiny_transformer_config(), VOCAB, SEQ, head="lm_tokens", plus_token_id=3,
                          minus_token_id=4).eval()
    batch = collate_rows([[s] for s in _samples([20, 13, 32])], SEQ, 0)
    with torch.no_grad():
        per_row = prm(batch["tokens"], batch["position_ids"], batch["attention_mask"], step_mask=batch["step_mask"])
        seen = _record_rotary(prm)
        out = erprm_forward_step(_NeMoLike(prm), _data_step(batch))
    assert [tuple(f.shape) for f in seen] == [(SEQ, 1, 1, 16)]
    torch.testing.assert_close(out, per_row, rtol=0, atol=1e-6)


def test_packed_rows_keep_per_row_positions_and_refuse_fused_rope(megatron_cpu):
    from nemo_erprm.model.build import build_prm_model
    from nemo_erprm.nemo.steps import SEVERAL_PER_ROW, erprm_forward_step

    prm = build_prm_model(tiny_transformer_config(), VOCAB, SEQ, head="scalar").eval()
    data = _samples([12, 15, 30])
    batch = collate_rows([[data[0], data[1]], [data[2]]], SEQ, 0)
    step = _data_step(batch)
    assert step[SEVERAL_PER_ROW] is True
    with torch.no_grad():
        seen = _record_rotary(prm)
        erprm_forward_step(_NeMoLike(prm), step)
        assert tuple(seen[0].shape) == (SEQ, 2, 1, 16)
        prm.config.apply_rope_fusion = True
        with pytest.raises(ValueError, match="cannot use fused RoPE"):
            erprm_forward_step(_NeMoLike(prm), step)


def test_thd_boundaries_of_two_rows_by_hand():
    from nemo_erprm.model.thd import flatten_cu_seqlens, max_segment_length, rows_hold_several_samples

    data = _samples([5, 7, 9, 20])
    batch = collate_rows([[data[0], data[1]], [data[2]]], SEQ, 0)
    # row 0: samples [0,5) [5,12), padding [12,32); row 1: sample [0,9), padding [9,32) -> offset 32
    assert batch["cu_seqlens"].tolist() == [[0, 5, 12, 32, -1], [0, 9, 32, -1, -1]]
    assert batch["max_seqlen"].tolist() == [[20], [23]]
    flat = flatten_cu_seqlens(batch["cu_seqlens"], SEQ)
    assert flat.dtype == torch.int32 and flat.tolist() == [0, 5, 12, 32, 41, 64]
    assert max_segment_length(flat) == 23
    assert rows_hold_several_samples(batch["cu_seqlens"], batch["num_tokens"])
    one_each = collate_rows([[data[2]], [data[3]]], SEQ, 0)
    assert not rows_hold_several_samples(one_each["cu_seqlens"], one_each["num_tokens"])
    full = collate_rows([[data[3], _samples([12])[0]]], SEQ, 0)  # a row filled exactly: no padding segment
    assert flatten_cu_seqlens(full["cu_seqlens"], SEQ).tolist() == [0, 20, 32]
    with pytest.raises(ValueError, match="must run from 0 to seq_length"):
        flatten_cu_seqlens(torch.tensor([[0, 5, 12, -1]]), SEQ)


def test_data_step_keeps_thd_boundaries_on_the_compute_device(megatron_cpu, monkeypatch):
    """cu_seqlens go to the compute device (TE attention and fused THD RoPE read them there);
    the longest segment and the packed flag are host values (no device sync)."""
    from nemo_erprm.nemo.steps import SEVERAL_PER_ROW, THD_CU_SEQLENS, THD_MAX_SEQLEN

    monkeypatch.setattr(torch.cuda, "current_device", lambda: torch.device("meta"))
    data = _samples([5, 7, 9])
    step = _data_step(collate_rows([[data[0], data[1]], [data[2]]], SEQ, 0))
    assert step[THD_CU_SEQLENS].device.type == "meta" and step[THD_CU_SEQLENS].shape == (6,)
    assert step[THD_MAX_SEQLEN] == 23 and isinstance(step[THD_MAX_SEQLEN], int)
    assert step[SEVERAL_PER_ROW] is True
    assert step["tokens"].device.type == "meta"


def test_thd_forward_step_flattens_the_micro_batch_in_step_order(megatron_cpu):
    """micro_batch_size 2 under THD: one row [1, 2s], boundaries offset per row, no mask, and
    the step tags in the order of step_targets[step_mask] (what the loss pairs them with).

    ``fake_model`` is a recording function standing in for the PRM's ``GPTModel`` under the
    Transformer Engine spec: THD attention is TE's fused attention, which needs TE and a GPU,
    and TE cannot be installed on a CPU host (its import breaks ``import megatron.core``;
    ../shared/docs/ENVIRONMENT.md). What it still covers: the arguments our forward step hands
    the model (shapes, ``PackedSeqParams``, no mask, tag order). The real THD forward runs in
    ``benchmarks/gpu_check.py`` (the ``bf16`` packed run against ``unpacked``: ``thd_parity``)."""
    from types import SimpleNamespace

    from nemo_erprm.nemo.steps import erprm_forward_step

    data = _samples([5, 7, 9])
    batch = collate_rows([[data[0], data[1]], [data[2]]], SEQ, 0)
    step = _data_step(batch)
    calls = []

    def fake_model(**kw):
        calls.append(kw)
        return kw["input_ids"][kw["step_mask"]]  # stands for "the head's output at each tag"

    fake_model.config = SimpleNamespace(packed_attention=True)
    out = erprm_forward_step(fake_model, step)
    kw = calls[0]
    assert kw["input_ids"].shape == (1, 2 * SEQ) and kw["step_mask"].shape == (1, 2 * SEQ)
    assert kw["attention_mask"] is None and kw["position_ids"] is None
    p = kw["packed_seq_params"]
    assert p.qkv_format == "thd" and p.cu_seqlens_q.tolist() == p.cu_seqlens_kv.tolist() == [0, 5, 12, 32, 41, 64]
    assert p.max_seqlen_q == p.max_seqlen_kv == 23
    assert torch.equal(out, batch["tokens"][batch["step_mask"]])
    assert torch.equal(step["step_sample"][step["step_mask"]], batch["step_sample"][batch["step_mask"]])


@pytest.mark.parametrize("rows", [[[0, 1]], [[0, 1], [2]]], ids=["one_row", "two_rows"])
def test_thd_rope_restarts_at_each_sample(megatron_cpu, rows):
    """megatron's RoPE on the flattened THD row with our boundaries == RoPE at each sample's
    own positions. With the row length as max_seqlen (what collate used to send), megatron
    indexes RoPE by absolute offset and samples after the first get shifted positions."""
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    from nemo_erprm.model.thd import flatten_cu_seqlens, max_segment_length

    data = _samples([5, 7, 9])
    batch = collate_rows([[data[i] for i in r] for r in rows], SEQ, 0)
    flat = flatten_cu_seqlens(batch["cu_seqlens"], SEQ)
    cfg = tiny_transformer_config()
    rope = RotaryEmbedding(kv_channels=16, rotary_percent=1.0)
    t = torch.randn(flat[-1].item(), 4, 16, generator=torch.Generator().manual_seed(1))
    thd = apply_rotary_pos_emb(t, rope(max_segment_length(flat), packed_seq=True), cfg, cu_seqlens=flat)
    table = rope(SEQ)[:, 0, 0, :]
    expected = apply_rotary_pos_emb(t.unsqueeze(1), table[batch["position_ids"].reshape(-1)][:, None, None, :], cfg)
    torch.testing.assert_close(thd, expected.squeeze(1), rtol=0, atol=1e-6)
    if len(rows) == 1:  # the old max_seqlen (= seq_length = total tokens) shifts the second sample
        wrong = apply_rotary_pos_emb(t, rope(SEQ, packed_seq=True), cfg, cu_seqlens=flat)
        assert (wrong - expected.squeeze(1)).abs().max() > 1e-3
