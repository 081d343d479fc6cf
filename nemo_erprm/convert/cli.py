"""Command lines of the conversion tools (``tools/convert_hf_checkpoint.py``,
``tools/export_hf_checkpoint.py``)."""

from __future__ import annotations

import argparse
from typing import Sequence

# check_safetensors_file: also imported from here by eval/scorers.py
from nemo_erprm.convert.checks import check_convert_args, check_export_args, check_safetensors_file  # noqa: F401
from nemo_erprm.errors import run_reporting_errors as _run


def _quiet(tool: str, verbose: bool, out: str) -> None:
    """Library warnings to ``<out>.log`` beside the output (not inside it: an export folder
    holds only what transformers reads)."""
    from pathlib import Path

    from nemo_erprm.runtime.logs import quiet_third_party, set_log_file

    if quiet_third_party(tool, verbose):
        target = Path(out)
        set_log_file(target.parent / f"{target.name}.{tool}.log")


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
    p.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs on the console")
    args = p.parse_args(argv)
    code = _run(check_convert_args, args)  # seconds, before NeMo loads
    if code:
        return code
    _quiet("convert", args.verbose, args.out)
    from nemo_erprm.convert.hf_to_prm import convert_hf_to_prm

    return _run(convert_hf_to_prm, args.hf_dir, args.out, head=args.head, step_tag=args.step_tag,
                add_step_tag_token=args.add_step_tag_token, plus_token=args.plus_token,
                minus_token=args.minus_token, tp=args.tp, pp=args.pp, dtype=args.dtype)


def export_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="export_hf_checkpoint.py", description="Trained PRM checkpoint -> HF model.")
    p.add_argument("--ckpt", required=True, help="PRM checkpoint directory (context/ + weights/)")
    p.add_argument("--out", required=True, help="output HF directory (written beside it, renamed into place when complete)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (the old folder stays whole until the new one is complete)")
    p.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs on the console")
    args = p.parse_args(argv)
    code = _run(check_export_args, args.ckpt, args.out, args.overwrite)  # seconds, before NeMo loads
    if code:
        return code
    _quiet("export", args.verbose, args.out)
    from nemo_erprm.convert.prm_to_hf import export_prm_to_hf

    return _run(export_prm_to_hf, args.ckpt, args.out, args.overwrite)
