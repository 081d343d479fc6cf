"""Command lines of the conversion tools (``tools/convert_hf_checkpoint.py``,
``tools/export_hf_checkpoint.py``)."""

from __future__ import annotations

import argparse
from typing import Sequence


from nemo_erprm.errors import run_reporting_errors as _run


def convert_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="convert_hf_checkpoint.py",
        description="HF checkpoint (dir, .gguf, or 'smollm2') -> NeMo 2 checkpoint of the ER-PRM.",
    )
    p.add_argument("--hf-dir", required=True, help="HF model directory, a .gguf file, or 'smollm2' (embedded)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--head", default="lm_tokens", choices=("lm_tokens", "scalar"))
    p.add_argument("--step-tag", default="ки")
    p.add_argument("--add-step-tag-token", action="store_true",
                   help="if the tag is not one token, add it as a special token (embedding grows by one row)")
    p.add_argument("--plus-token", default="+")
    p.add_argument("--minus-token", default="-")
    p.add_argument("--tp", type=int, default=1, help="layout to check divisibility for (the checkpoint loads at any TP/PP)")
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="convert in this dtype (default: the source's)")
    args = p.parse_args(argv)
    from nemo_erprm.convert.hf_to_prm import convert_hf_to_prm

    return _run(convert_hf_to_prm, args.hf_dir, args.out, head=args.head, step_tag=args.step_tag,
                add_step_tag_token=args.add_step_tag_token, plus_token=args.plus_token,
                minus_token=args.minus_token, tp=args.tp, pp=args.pp, dtype=args.dtype)


def export_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="export_hf_checkpoint.py", description="Trained PRM checkpoint -> HF model.")
    p.add_argument("--ckpt", required=True, help="PRM checkpoint directory (context/ + weights/)")
    p.add_argument("--out", required=True, help="output HF directory")
    args = p.parse_args(argv)
    from nemo_erprm.convert.prm_to_hf import export_prm_to_hf

    return _run(export_prm_to_hf, args.ckpt, args.out)
