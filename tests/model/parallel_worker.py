"""torchrun worker for the TP/PP/DP parity tests of the ER-PRM core (CPU backend, gloo).

    torchrun --nproc_per_node N tests/model/parallel_worker.py --tp T --pp P --ckpt DIR --out OUT.json [--save]

With --save (one process) it builds the reference model per head and writes a megatron
dist checkpoint; otherwise every layout loads that checkpoint (resharding to its TP/PP),
records the initial step scores, trains 5 optimizer steps and writes the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nemo_erprm.runtime.cpu_backend import adapt_config_for_cpu, enable_cpu_backend  # noqa: E402

SEQ = 48
VOCAB = 512
GLOBAL_ROWS = 8
MICRO = 2  # overridden by --micro
HEADS = ("lm_tokens", "scalar")


def tiny_config():
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(
        num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True, params_dtype=torch.float32,
        layernorm_epsilon=1e-5, calculate_per_token_loss=True,
        tensor_model_parallel_size=_ARGS.tp, pipeline_model_parallel_size=_ARGS.pp,
        pipeline_dtype=torch.float32, virtual_pipeline_model_parallel_size=_ARGS.vpp,
    )
    return adapt_config_for_cpu(cfg)


def synthetic_rows(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(GLOBAL_ROWS):
        n = int(torch.randint(12, SEQ, (1,), generator=g))
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        k = int(torch.randint(1, 5, (1,), generator=g))
        tags = sorted(torch.randperm(n, generator=g)[:k].tolist())
        samples.append({"input_ids": ids, "tag_positions": tags,
                        "targets": torch.rand(k, generator=g).tolist(), "sample_index": i})
    return samples


def main() -> None:
    enable_cpu_backend()
    from megatron.core import dist_checkpointing, parallel_state

    from nemo_erprm.data.collate import collate_rows
    from nemo_erprm.model.build import build_prm_model
    from nemo_erprm.model.megatron_step import build_optimizer, run_microbatches, train_step, wrap_ddp
    from nemo_erprm.runtime.parallel import init_distributed

    init_distributed(_ARGS.tp, _ARGS.pp, vpp=_ARGS.vpp, seed=1234)
    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    samples = synthetic_rows()
    mine = samples[dp_rank::dp]
    microbatches = [collate_rows([[s] for s in mine[i:i + MICRO]], SEQ, 0) for i in range(0, len(mine), MICRO)]
    result = {}
    for head in HEADS:
        stages = [None] if not _ARGS.vpp else list(range(_ARGS.vpp))
        chunks = []
        for vp in stages:
            if vp is not None:
                parallel_state.set_virtual_pipeline_model_parallel_rank(vp)
            chunks.append(build_prm_model(tiny_config(), VOCAB, SEQ, head=head, plus_token_id=7,
                                          minus_token_id=300, vp_stage=vp))
        ckpt = Path(_ARGS.ckpt) / head
        if _ARGS.save:
            ckpt.mkdir(parents=True, exist_ok=True)
            dist_checkpointing.save(chunks[0].sharded_state_dict(), str(ckpt))
            continue
        # one load call for all chunks: the checkpoint keys live inside the ShardedTensors, the
        # outer dict only sorts the result per chunk
        loaded = dist_checkpointing.load({i: c.sharded_state_dict() for i, c in enumerate(chunks)}, str(ckpt))
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[i])
        ddps = [wrap_ddp(c) for c in chunks]
        opt = build_optimizer(ddps, lr=3e-3)
        for d in ddps:
            d.eval()
        with torch.no_grad():
            outs = run_microbatches(ddps, microbatches, head, SEQ, MICRO, forward_only=True)
        for d in ddps:
            d.train()
        scores = []  # (sample, tag index, P(good), loss) for every step this rank scored
        for mb, out in zip(microbatches, outs):
            order = mb["step_sample"][mb["step_mask"]].tolist()
            seen: dict[int, int] = {}
            for sample, score, loss in zip(order, out["step_scores"].tolist(), out["step_losses"].tolist()):
                seen[sample] = seen.get(sample, -1) + 1
                scores.append((sample, seen[sample], score, loss))
        losses = []
        for _ in range(5):
            metrics = train_step(ddps, opt, microbatches, head, SEQ, MICRO)
            losses.append(metrics["loss"])
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, scores)
        per_step = sorted({tuple(x) for part in gathered for x in part})
        result[head] = {"initial_steps": per_step, "train_losses": losses}
    if not _ARGS.save and torch.distributed.get_rank() == 0:
        Path(_ARGS.out).write_text(json.dumps(result))
    torch.distributed.barrier()
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default="")
    p.add_argument("--save", action="store_true")
    p.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per rank")
    p.add_argument("--micro", type=int, default=2, help="micro batch size (rows per microbatch)")
    _ARGS = p.parse_args()
    MICRO = _ARGS.micro
    main()
