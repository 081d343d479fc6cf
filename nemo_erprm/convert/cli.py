"""Command lines of the conversion tools (``tools/convert_hf_checkpoint.py``,
``tools/export_hf_checkpoint.py``)."""

from __future__ import annotations

import argparse
from typing import Sequence


from nemo_erprm.errors import ConfigError, run_reporting_errors as _run


def check_convert_args(args: argparse.Namespace) -> None:
    """Argument and path checks that need no heavy import."""
    from nemo_erprm.embedded import resolve_model_path
    from nemo_erprm.runtime.outdir import check_output_dir

    for flag, value in (("--tp", args.tp), ("--pp", args.pp)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    try:
        resolve_model_path(args.hf_dir)
    except ConfigError as e:
        raise ConfigError(f"--hf-dir {args.hf_dir}: {e}") from None
    check_output_dir(args.out, "--out", overwrite=None)


def check_export_args(ckpt: str, out_dir: str, overwrite: bool = False) -> None:
    """The checks that need no heavy import: run before NeMo loads (seconds, not ~20 s)."""
    from pathlib import Path

    from nemo_erprm.runtime.outdir import check_output_dir

    path = Path(ckpt)
    if not path.is_dir():
        raise ConfigError(f"--ckpt {ckpt}: no such folder")
    if not (path / "context").is_dir() or not (path / "weights").is_dir():
        raise ConfigError(f"--ckpt {ckpt}: not a PRM checkpoint (needs context/ and weights/)")
    if Path(out_dir).resolve() == path.resolve():
        raise ConfigError(f"--out {out_dir}: is the checkpoint itself")
    check_output_dir(out_dir, "--out", overwrite)


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
    code = _run(check_convert_args, args)  # seconds, before NeMo loads
    if code:
        return code
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
    args = p.parse_args(argv)
    code = _run(check_export_args, args.ckpt, args.out, args.overwrite)  # seconds, before NeMo loads
    if code:
        return code
    from nemo_erprm.convert.prm_to_hf import export_prm_to_hf

    return _run(export_prm_to_hf, args.ckpt, args.out, args.overwrite)
