#!/usr/bin/env python
"""See `--help` and README.md (Stage: checkpoints)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

if __name__ == "__main__":  # required: NeMo's checkpoint saving re-imports the main script
    from nemo_erprm.convert.cli import export_main

    sys.exit(export_main())
