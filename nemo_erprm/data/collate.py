"""Rows of one or more samples -> the batch tensors of the ER-PRM forward and loss.

A row holds one sample, or several with ``packing``: samples are placed back to back,
positions restart at 0 for each, and the attention mask is block-diagonal causal, so a
packed sample computes exactly what it computes alone. The rows of a micro-batch are padded
to a common width: its longest row rounded up to ``pad_multiple`` (``data.pad_to=longest``),
or ``seq_length`` (``max_length``; what pipeline parallelism needs, see :func:`pad_width`).
Padding after a row's tokens changes nothing in it: attention is causal within a sample and
pad tokens carry no step tag, so the loss and its gradient do not depend on the width.

Batch keys:
- ``tokens`` [b, s] int64, ``position_ids`` [b, s] int64
- ``attention_mask`` [b, 1, s, s] bool, True = masked (megatron's convention)
- ``step_mask`` [b, s] bool: the step-tag positions; ``step_targets`` [b, s] float32 ER labels
- ``step_sample`` [b, s] int64: index of the sample each tag belongs to (-1 elsewhere)
- ``num_tokens`` [b] int64: real (non-padding) tokens per row, for throughput
- ``cu_seqlens`` [b, n+1] int32: per row the sample boundaries (padding is a segment of its
  own, ``-1`` after the last boundary), ``cu_seqlens_argmin`` [b, 1]: index of the first ``-1``,
  ``max_seqlen`` [b, 1] int32: the row's longest segment. THD attention (TE spec) lays the rows
  of a micro-batch end to end: :mod:`nemo_erprm.model.thd`.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from nemo_erprm.errors import ConfigError

PAD_TO = ("longest", "max_length")
# Every width is a multiple of 16: few distinct shapes (and kernel autotunes); FP8 needs it too.
BASE_PAD_MULTIPLE = 16
# Transformer Engine's FP8 rules on the tokens of one rank (NVIDIA/TransformerEngine 2.20.0.dev0,
# commit d0067d0). Linear, LayerNormLinear and LayerNormMLP check their local input, before the
# sequence-parallel all-gather, with ``pytorch/utils.py`` ``assert_dim_for_fp8_exec``: the product of
# all dimensions but the last divisible by 8 (every recipe). Block-scaled recipes also need whole
# blocks of rows (``is_quantizable``; docs ``features/low_precision_training``): MXFP8 32
# (``MXFP8_BLOCK_SCALING_SIZE``), FP8 blockwise 128 (``Float8BlockQuantizer.block_len``).
FP8_ROW_MULTIPLE = {"delayed": 8, "tensorwise": 8, "mxfp8": 32, "blockwise": 128}
# The tokens of the micro-batch (all-gathered under sequence parallelism) are the inner dimension
# of the weight-gradient GEMM, whose FP8 leading dimension cuBLAS needs divisible by 16
# (``common/gemm/cublaslt_gemm.cu``: "Leading dimension requirement ... Caller must pad").
FP8_TOKEN_MULTIPLE = 16


def effective_pad_to(pad_to: str, pipeline_stages: int) -> str:
    """``pad_to`` as a run with ``pipeline_stages`` stages can use it. Pipeline parallelism pads to
    ``seq_length``: megatron's schedules size every activation a stage receives from the one
    ``seq_length`` of the step (megatron-core 0.15.3 ``pipeline_parallel/schedules.py``
    ``get_tensor_shapes``, and ``tensor_shape = [seq_length, micro_batch_size, hidden]`` for the
    interleaved schedule), and NeMo passes the data sampler's fixed ``seq_len`` there for a
    micro-batch sampler (``nemo/lightning/megatron_parallel.py`` ``MegatronStep.__call__`` /
    ``get_data_iterator_and_seq_length``). Per-micro-batch widths would need
    ``variable_seq_lengths=True``, an extra shape exchange before every send and receive
    (``p2p_communication.py`` ``_communicate_shapes``)."""
    return "max_length" if pipeline_stages > 1 else pad_to


def fp8_row_multiple(fp8: Optional[str], fp8_recipe: str = "delayed") -> int:
    """What the rows (tokens) of each FP8 GEMM input on one rank must be a multiple of; 1 without FP8."""
    if not fp8:
        return 1
    if fp8_recipe not in FP8_ROW_MULTIPLE:
        raise ConfigError(f"model.fp8_recipe must be one of {tuple(FP8_ROW_MULTIPLE)}, got {fp8_recipe!r}")
    return FP8_ROW_MULTIPLE[fp8_recipe]


def required_multiple(tensor_parallel: int = 1, sequence_parallel: bool = False, context_parallel: int = 1, *,
                      fp8: Optional[str] = None, fp8_recipe: str = "delayed", micro_batch_size: int = 1) -> int:
    """What the width ``s`` of every micro-batch must be a multiple of for the layout to run.

    Megatron splits the sequence over ``2*CP`` chunks (context parallelism) and, with sequence
    parallelism, over the TP ranks; TE's FP8 GEMMs then see ``s / (CP*TP) * micro_batch_size``
    rows on each rank (``s / CP * micro_batch_size`` without SP), which must be whole blocks of
    :func:`fp8_row_multiple`, and ``s * micro_batch_size`` tokens in all, a multiple of
    :data:`FP8_TOKEN_MULTIPLE`. A larger micro-batch can make a smaller width enough."""
    shards = context_parallel * (tensor_parallel if sequence_parallel else 1)
    rows = fp8_row_multiple(fp8, fp8_recipe)
    need = [shards * (rows // math.gcd(rows, micro_batch_size))]
    if context_parallel > 1:
        need.append(2 * context_parallel)
    if fp8:
        need.append(FP8_TOKEN_MULTIPLE // math.gcd(FP8_TOKEN_MULTIPLE, micro_batch_size))
    return math.lcm(*need)


def pad_multiple(tensor_parallel: int = 1, sequence_parallel: bool = False, context_parallel: int = 1, *,
                 fp8: Optional[str] = None, fp8_recipe: str = "delayed", micro_batch_size: int = 1) -> int:
    """What ``data.pad_to=longest`` rounds the width of a micro-batch up to: 16 and
    :func:`required_multiple` (sequence/context parallel splits, TE's FP8 row blocks)."""
    return math.lcm(BASE_PAD_MULTIPLE, required_multiple(
        tensor_parallel, sequence_parallel, context_parallel, fp8=fp8, fp8_recipe=fp8_recipe,
        micro_batch_size=micro_batch_size))


def check_seq_length(seq_length: int, tensor_parallel: int = 1, sequence_parallel: bool = False,
                     context_parallel: int = 1, *, fp8: Optional[str] = None, fp8_recipe: str = "delayed",
                     micro_batch_size: int = 1) -> None:
    """``seq_length`` is the width of every micro-batch with ``pad_to=max_length`` (and under
    pipeline parallelism) and caps the rounded-up width of ``longest``: it must be a multiple of
    :func:`required_multiple` itself, else the run fails at its first long batch."""
    need = required_multiple(tensor_parallel, sequence_parallel, context_parallel, fp8=fp8, fp8_recipe=fp8_recipe,
                             micro_batch_size=micro_batch_size)
    if seq_length % need == 0:
        return
    why = []
    if sequence_parallel and tensor_parallel > 1:
        why.append(f"sequence parallelism splits it over tensor_model_parallel_size={tensor_parallel}")
    if context_parallel > 1:
        why.append(f"context parallelism splits it in 2 x {context_parallel} chunks")
    if fp8:
        why.append(f"Transformer Engine's FP8 GEMMs ({fp8_recipe} recipe) need whole blocks of "
                   f"{fp8_row_multiple(fp8, fp8_recipe)} tokens per rank and {FP8_TOKEN_MULTIPLE} in all, "
                   f"with data.micro_batch_size={micro_batch_size}")
    raise ConfigError(f"model.seq_length={seq_length} must be a multiple of {need}: {'; '.join(why)} "
                      f"(e.g. model.seq_length={seq_length // need * need or need})")


def pad_width(row_lengths: Sequence[int], seq_length: int, multiple: Optional[int]) -> int:
    """The width of a micro-batch: ``seq_length`` when ``multiple`` is None (fixed width), else
    its longest row rounded up to ``multiple``, never more than ``seq_length``."""
    if multiple is None:
        return seq_length
    longest = max(row_lengths, default=0)
    return min(seq_length, max(1, -(-longest // multiple)) * multiple)


def pack_rows(lengths: Sequence[int], seq_length: int, packing: bool) -> list[list[int]]:
    """Group sample indices into rows. Without packing one sample per row; with packing,
    samples fill rows in order (next-fit), so the grouping is deterministic."""
    if not packing:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    used = seq_length + 1
    for i, n in enumerate(lengths):
        if n > seq_length:
            raise ValueError(f"sample {i} has {n} tokens > seq_length {seq_length} (tokenize with truncation first)")
        if used + n > seq_length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def collate_rows(
    rows: Sequence[Sequence[dict[str, Any]]], seq_length: int, pad_id: int, sample_offset: Sequence[int] | None = None,
    pad_multiple: Optional[int] = None,
) -> dict[str, torch.Tensor]:
    """``rows``: per row, the samples (``input_ids``, ``tag_positions``, ``targets``, optional
    ``sample_index``) -> batch dict (see module doc), ``seq_length`` wide, or with
    ``pad_multiple`` as wide as the longest row rounded up to it (:func:`pad_width`)."""
    b = len(rows)
    seq_length = pad_width([sum(len(s["input_ids"]) for s in row) for row in rows], seq_length, pad_multiple)
    tokens = torch.full((b, seq_length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, seq_length), dtype=torch.long)
    allowed = torch.zeros((b, seq_length, seq_length), dtype=torch.bool)
    step_mask = torch.zeros((b, seq_length), dtype=torch.bool)
    step_targets = torch.zeros((b, seq_length), dtype=torch.float32)
    step_sample = torch.full((b, seq_length), -1, dtype=torch.long)
    num_tokens = torch.zeros(b, dtype=torch.long)
    max_segments = max(len(r) for r in rows) + 2  # + padding segment, + one -1 sentinel
    cu_seqlens = torch.full((b, max_segments + 1), -1, dtype=torch.int32)
    max_seqlen = torch.zeros((b, 1), dtype=torch.int32)
    causal = torch.ones((seq_length, seq_length), dtype=torch.bool).tril()
    for r, row in enumerate(rows):
        at = 0
        cu = [0]
        for sample in row:
            ids = sample["input_ids"]
            n = len(ids)
            if at + n > seq_length:
                raise ValueError(f"row {r} overflows seq_length {seq_length}")
            tokens[r, at : at + n] = torch.as_tensor(ids, dtype=torch.long)
            position_ids[r, at : at + n] = torch.arange(n)
            allowed[r, at : at + n, at : at + n] = causal[:n, :n]
            pos = torch.as_tensor(sample["tag_positions"], dtype=torch.long) + at
            step_mask[r, pos] = True
            step_targets[r, pos] = torch.as_tensor(sample["targets"], dtype=torch.float32)
            step_sample[r, pos] = int(sample.get("sample_index", -1))
            at += n
            cu.append(at)
        num_tokens[r] = at
        if at < seq_length:
            # padding: each pad token attends to itself only (no NaN rows, no effect on samples)
            idx = torch.arange(at, seq_length)
            allowed[r, idx, idx] = True
            position_ids[r, at:] = torch.arange(seq_length - at)
            cu.append(seq_length)
        cu_seqlens[r, : len(cu)] = torch.as_tensor(cu, dtype=torch.int32)
        max_seqlen[r, 0] = max(hi - lo for lo, hi in zip(cu, cu[1:]))
    return {
        "tokens": tokens,
        "position_ids": position_ids,
        "attention_mask": (~allowed).unsqueeze(1),
        "step_mask": step_mask,
        "step_targets": step_targets,
        "step_sample": step_sample,
        "num_tokens": num_tokens,
        "cu_seqlens": cu_seqlens,
        "cu_seqlens_argmin": torch.argmin(cu_seqlens, dim=1, keepdim=True),
        "max_seqlen": max_seqlen,
    }


def length_sorted_batches(lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Indices grouped into micro-batches of similar length, longest first.

    Rows of a micro-batch are right-padded to its longest, so grouping by length is what keeps
    padding small: on the shared GSM8K Best-of-4 candidates, batches of 8 in file order forward
    1.5x the real tokens, length-sorted ones 1.19x. Longest first surfaces an out-of-memory at once.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[b: b + micro_batch_size] for b in range(0, len(order), micro_batch_size)]
