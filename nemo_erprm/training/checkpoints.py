"""Where a run folder's checkpoints are (light: no NeMo import, usable by the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest ``checkpoints/*-last`` of a run folder (what a restart resumes from), or None."""
    found = sorted((Path(run_dir) / "checkpoints").glob("*-last"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
