"""Command lines of the conversion tools (``tools/convert_hf_checkpoint.py``,
``tools/export_hf_checkpoint.py``)."""

from __future__ import annotations

import argparse
from typing import Sequence


from nemo_erprm.errors import ConfigError, run_reporting_errors as _run


def _quiet(tool: str, verbose: bool, out: str) -> None:
    """Library warnings to ``<out>.log`` beside the output (not inside it: an export folder
    holds only what transformers reads)."""
    from pathlib import Path

    from nemo_erprm.runtime.logs import quiet_third_party, set_log_file

    if quiet_third_party(tool, verbose):
        target = Path(out)
        set_log_file(target.parent / f"{target.name}.{tool}.log")


def check_safetensors_file(path) -> None:
    """A safetensors file whose header or data is cut short (an interrupted copy) fails here,
    named, instead of deep inside the loader."""
    import json
    import os

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            raise ConfigError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ConfigError(f"{path}: not a safetensors file (unreadable header)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ConfigError(f"{path}: truncated safetensors file ({size} bytes, its header describes {8 + n + end})")


def check_convert_args(args: argparse.Namespace) -> None:
    """Argument and path checks that need no heavy import."""
    from nemo_erprm.embedded import resolve_model_path
    from nemo_erprm.runtime.outdir import check_output_dir

    for flag, value in (("--tp", args.tp), ("--pp", args.pp)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    try:
        _, gguf = resolve_model_path(args.hf_dir)
    except ConfigError as e:
        raise ConfigError(f"--hf-dir {args.hf_dir}: {e}") from None
    if gguf is None:
        from pathlib import Path

        for f in sorted(Path(args.hf_dir).glob("*.safetensors")):
            check_safetensors_file(f)
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
