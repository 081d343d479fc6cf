"""THD ("packed") attention inputs for a micro-batch of packed rows (Transformer Engine spec).

Under the TE layer spec, attention is Transformer Engine's ``DotProductAttention`` with a
causal mask type, and TE reads ``attention_mask`` only for padding/arbitrary mask types: the
block-diagonal mask of packed rows (:mod:`nemo_erprm.data.collate`) would be ignored and the
samples of a row would attend to each other. THD attention separates them by the sample
boundaries instead (``cu_seqlens``), and RoPE restarts at every boundary
(megatron's ``apply_rotary_pos_emb`` with ``cu_seqlens``).

megatron's THD path squeezes the batch dimension (``attention.py``: ``query.squeeze(1)``), so
it takes one row. A micro-batch of ``b`` rows of length ``s`` is therefore laid end to end as
one row ``[1, b*s]`` with the boundaries of row ``r`` offset by ``r*s``; row-major flattening
keeps the step tags in the order of ``step_targets[step_mask]``, so the loss is unchanged.
NeMo's ``get_packed_seq_params`` assumes one row per micro-batch (it squeezes ``[b, n]``).

The boundaries are computed on the host from the collated batch (no device sync) and then
moved to the compute device: TE's attention and fused THD RoPE read them there.
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def flatten_cu_seqlens(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Per-row boundaries ``[b, n]`` (``-1`` after the last, as collated) -> the ``[m + 1]``
    int32 boundaries of the ``b`` rows laid end to end (``0 ... b*seq_length``)."""
    if cu_seqlens.dim() != 2:
        raise ValueError(f"cu_seqlens must be [rows, n], got shape {tuple(cu_seqlens.shape)}")
    flat = [torch.zeros(1, dtype=torch.int32)]
    for r in range(cu_seqlens.shape[0]):
        row = cu_seqlens[r]
        row = row[row >= 0].to(torch.int32)
        if row.numel() < 2 or int(row[0]) != 0 or int(row[-1]) != seq_length:
            raise ValueError(f"row {r}: cu_seqlens {row.tolist()} must run from 0 to seq_length {seq_length} "
                             "(padding is a segment of its own)")
        flat.append(row[1:] + r * seq_length)
    return torch.cat(flat)


def max_segment_length(flat_cu_seqlens: torch.Tensor) -> int:
    """Longest segment. Must be the true maximum, not the row length: megatron sizes RoPE by it
    and, if it equals the total length, indexes RoPE by absolute offset (no restart per sample)."""
    return int((flat_cu_seqlens[1:] - flat_cu_seqlens[:-1]).max())


def rows_hold_several_samples(cu_seqlens: torch.Tensor, num_tokens: torch.Tensor) -> bool:
    """Whether any row packs more than one sample: its first segment ends before its real
    tokens do. Rows of one sample need no per-row RoPE positions (the shared 0..s-1 table)."""
    return bool((cu_seqlens[:, 1] < num_tokens).any())


def thd_packed_seq_params(flat_cu_seqlens: torch.Tensor, max_seqlen: int) -> PackedSeqParams:
    """megatron's ``PackedSeqParams`` for THD self-attention over one flattened row."""
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=flat_cu_seqlens,
        cu_seqlens_kv=flat_cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )


def flatten_rows(x: torch.Tensor | None) -> torch.Tensor | None:
    """``[b, s]`` -> ``[1, b*s]`` (row-major, the order of the flattened boundaries)."""
    return None if x is None else x.reshape(1, -1)
