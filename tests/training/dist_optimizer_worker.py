"""One CPU process: a megatron DistributedOptimizer over a model split into several DDP
buckets takes one Adam step, then builds its fully reshardable checkpoint state.

    python tests/training/dist_optimizer_worker.py --out OUT.json [--unpatched]

Writes, per parameter, whether the checkpoint's main param / exp_avg / exp_avg_sq equal the
optimizer's own (they must: the checkpoint is what a resume loads).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--unpatched", action="store_true", help="megatron's own code (to show the defect)")
    args = parser.parse_args()

    from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

    enable_cpu_backend()
    import torch

    from nemo_erprm.runtime.parallel import init_distributed

    init_distributed()
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer import MegatronModule, TransformerConfig
    from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

    if not args.unpatched:
        from nemo_erprm.runtime.dist_optimizer import make_dist_optimizer_checkpointable

        make_dist_optimizer_checkpointable()

    class Chain(MegatronModule):
        """Linear layers whose sizes (37*29+29 = 1102) are no multiple of megatron's bucket
        padding (128), so every bucket after the first starts after some padding."""

        def __init__(self, config: TransformerConfig) -> None:
            super().__init__(config)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(37, 29) for _ in range(4))
            self.out = torch.nn.Linear(29, 37)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = self.out(torch.tanh(layer(x)))
            return x

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            return make_sharded_tensors_for_checkpoint(self.state_dict(keep_vars=True), prefix, {}, sharded_offsets)

    torch.manual_seed(0)
    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1)
    ddp_config = DistributedDataParallelConfig(
        use_distributed_optimizer=True, overlap_grad_reduce=True, bucket_size=1000)  # one layer per bucket
    model = DistributedDataParallel(config, ddp_config, Chain(config))
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, use_distributed_optimizer=True),
                                       [model])
    model.zero_grad_buffer()
    optimizer.zero_grad()
    model(torch.randn(3, 37)).square().sum().backward()
    model.finish_grad_sync()
    optimizer.step()  # non-zero moments, updated params

    model_state = model.module.sharded_state_dict()
    weights = {sh.key: sh.data.detach() for sh in model_state.values()}
    dist_opt = optimizer.chained_optimizers[0] if hasattr(optimizer, "chained_optimizers") else optimizer
    adam_state = {}  # parameter name -> the optimizer's own exp_avg / exp_avg_sq (DP=1: whole params)
    for model_param, (group, order) in dist_opt.model_param_group_index_map.items():
        main_param = dist_opt.optimizer.param_groups[group]["params"][order]
        name = next(k for k, v in weights.items() if v.data_ptr() == model_param.data_ptr())
        adam_state[name] = {k: dist_opt.optimizer.state[main_param][k].view(model_param.shape)
                            for k in ("exp_avg", "exp_avg_sq")}
    ckpt = optimizer.sharded_state_dict(model_state, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    result = {"buckets": len(model.buffers[0].buckets), "params": {}}
    for tensors in ckpt["param_state"].values():
        name = tensors["param"].key.removeprefix("optimizer.state.param.")
        result["params"][name] = {
            "param": torch.equal(tensors["param"].data, weights[name]),
            **{k: torch.equal(tensors[k].data, adam_state[name][k]) for k in ("exp_avg", "exp_avg_sq")},
        }
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
