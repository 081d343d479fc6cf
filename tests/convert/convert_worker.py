"""torchrun worker: load a converted PRM checkpoint at (TP, PP) and write its outputs.

    torchrun --nproc_per_node N tests/convert/convert_worker.py --ckpt DIR --samples S.json --out OUT.pt [--tp T --pp P]

Writes (last pipeline stage, TP rank 0) the full LM logits and the step logits of every sample.
``--ckpt/--samples/--out`` may be repeated: the checkpoints are read one after the other in
one launch (a process start with NeMo's imports costs more than a tiny model's forward).
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
    if not len(args.ckpt) == len(args.samples) == len(args.out):
        sys.exit("give one --samples and one --out per --ckpt")
    for ckpt, samples, out in zip(args.ckpt, args.samples, args.out):
        outputs(ckpt, samples, out, args.tp, args.pp)


def outputs(ckpt: str, samples_path: str, out: str, tp: int, pp: int) -> None:
    from megatron.core import parallel_state as ps

    from nemo_erprm.convert.load import load_prm_modules
    from nemo_erprm.data.collate import collate_rows
    from nemo_erprm.model.megatron_step import forward_outputs

    modules, cfg, _ = load_prm_modules(ckpt, tp, pp, dtype=torch.float32)
    samples = json.loads(Path(samples_path).read_text())
    batches = [collate_rows([[s]], SEQ, 0) for s in samples]
    lm = forward_outputs(modules, batches, SEQ, 1, lm_logits=True)
    steps = forward_outputs(modules, batches, SEQ, 1, lm_logits=False)
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
        torch.save({"lm_logits": [x[0, :len(s["input_ids"])] for x, s in zip(lm, samples)],
                    "step_logits": steps, "head": cfg.head}, out)
    torch.distributed.barrier()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True, action="append")
    p.add_argument("--samples", required=True, action="append")
    p.add_argument("--out", required=True, action="append")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    main(p.parse_args())
