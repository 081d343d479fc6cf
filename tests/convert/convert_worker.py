"""torchrun worker: load a converted PRM checkpoint at (TP, PP) and write its outputs.

    torchrun --nproc_per_node N tests/convert/convert_worker.py --ckpt DIR --samples S.json --out OUT.pt [--tp T --pp P]

Writes (last pipeline stage, TP rank 0) the full LM logits and the step logits of every sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nemo_erprm.runtime.cpu_backend import enable_cpu_backend  # noqa: E402

SEQ = 64


def main(args) -> None:
    enable_cpu_backend()
    from megatron.core import parallel_state as ps

    from nemo_erprm.convert.load import load_prm_modules
    from nemo_erprm.data.collate import collate_rows
    from nemo_erprm.model.megatron_step import forward_outputs

    modules, cfg, _ = load_prm_modules(args.ckpt, args.tp, args.pp, dtype=torch.float32)
    samples = json.loads(Path(args.samples).read_text())
    batches = [collate_rows([[s]], SEQ, 0) for s in samples]
    lm = forward_outputs(modules, batches, SEQ, 1, lm_logits=True)
    steps = forward_outputs(modules, batches, SEQ, 1, lm_logits=False)
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
        torch.save({"lm_logits": [x[0, :len(s["input_ids"])] for x, s in zip(lm, samples)],
                    "step_logits": steps, "head": cfg.head}, args.out)
    torch.distributed.barrier()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    main(p.parse_args())
