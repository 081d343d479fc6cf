"""How wide the micro-batches of a layout may be: the padding rule of ``data.pad_to`` and the
width multiples that sequence parallelism and Transformer Engine's FP8 GEMMs need. Plain
arithmetic, no torch: the training config checks ``model.seq_length`` with it at load time."""

from __future__ import annotations

import math
from typing import Optional

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
