"""Argument and path checks of the conversion tools that need no heavy import: they run in
seconds, before NeMo loads (~20 s). Shared by the command lines (:mod:`nemo_erprm.convert.cli`)
and the library entry points (:mod:`nemo_erprm.convert.prm_to_hf`), which both import it."""

from __future__ import annotations

import argparse

from nemo_erprm.errors import ConfigError


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
    from nemo_erprm.labeling.segmentation import check_step_tag
    from nemo_erprm.runtime.outdir import check_output_dir

    for flag, value in (("--tp", args.tp), ("--pp", args.pp)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    check_step_tag(args.step_tag, "--step-tag")
    try:
        _, gguf = resolve_model_path(args.hf_dir)
    except ConfigError as e:
        raise ConfigError(f"--hf-dir {args.hf_dir}: {e}") from None
    if gguf is None:
        from pathlib import Path

        if not (Path(args.hf_dir) / "config.json").is_file():
            raise ConfigError(f"--hf-dir {args.hf_dir}: no config.json (not a Hugging Face model folder)")
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
