#!/usr/bin/env python
"""Best-of-N evaluation of an ER-PRM; see `--help`, nemo_erprm/eval/cli.py and README.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

if __name__ == "__main__":
    from nemo_erprm.eval.cli import main

    sys.exit(main())
