#!/usr/bin/env python
"""Label rollouts with entropy-regularized step labels. See `--help` and README.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from nemo_erprm.labeling.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
