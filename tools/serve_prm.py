#!/usr/bin/env python
"""Serve an ER-PRM as a reward model; see `--help`, nemo_erprm/serving/cli.py and README.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

if __name__ == "__main__":
    from nemo_erprm.serving.cli import main

    sys.exit(main())
