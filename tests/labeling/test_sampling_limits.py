"""Sampling settings vLLM refuses are refused up front, naming the key, on every backend.

vLLM's limits (vllm/sampling_params.py at commit 00388f6573cc: `SamplingParams._verify_args`,
`_verify_greedy_sampling`, `__post_init__`): temperature finite and in [0, 2] (the upper bound
since vLLM PR #44965), 0 < temperature < 0.01 raised to 0.01, top_p in (0, 1], n >= 1, and
n == 1 under greedy sampling (temperature 0), raised when the first request is built, after
the engine has loaded. `label_rollouts.py` must stop before writing anything, exit 2, one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.backends import SamplingConfig
from nemo_erprm.labeling.config import load_label_config

REPO = Path(__file__).resolve().parents[2]

REFUSED = [  # (overrides, the key the one error line must name)
    (["sampling.temperature=0"], "sampling.n must be 1 with sampling.temperature=0"),  # default n=4 in the demo
    (["sampling.temperature=0", "sampling.n=1", "trajectories=policy"],
     "sampling.num_trajectories must be 1 with sampling.temperature=0"),
    (["sampling.temperature=nan"], "sampling.temperature must be 0 (greedy) or in [0.01, 2]"),
    (["sampling.temperature=inf"], "sampling.temperature must be 0 (greedy) or in [0.01, 2]"),
    (["sampling.temperature=2.5"], "sampling.temperature must be 0 (greedy) or in [0.01, 2]"),
    (["sampling.temperature=0.001"], "sampling.temperature must be 0 (greedy) or in [0.01, 2]"),
    (["sampling.top_p=nan"], "sampling.top_p must be in (0, 1], got nan"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", REFUSED, ids=lambda v: "-".join(v) if isinstance(v, list) else None)
def test_label_cli_refuses_what_vllm_would_refuse(overrides, message, tmp_path, tiny_lm_dir, shared_data):
    """Through the CLI as a user runs it, with a real (tiny) model configured: exit 2, one line,
    no output folder (before, a greedy run labeled N identical completions with `hf` and crashed
    at vLLM's first request; nan crashed mid-run in the sampler)."""
    out = tmp_path / "labels"
    proc = subprocess.run(
        [sys.executable, "tools/label_rollouts.py", "--config", "conf/demo/label.yaml", "input.limit=1",
         f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}", f"backend.model={tiny_lm_dir}",
         "sampling.max_new_tokens=4", f"output.dir={out}", "--no-progress", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-3000:]
    assert not out.exists()


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0, n=1), dict(temperature=0.01), dict(temperature=2.0),
                                    dict(temperature=0.7, top_p=1.0), dict(temperature=0.7, top_p=1e-6)])
def test_limits_are_inclusive_where_vllms_are(kwargs):
    SamplingConfig(**kwargs)


def test_greedy_with_reference_trajectories_needs_no_trajectory_count():
    """`sampling.num_trajectories` only becomes a request with `trajectories: policy`; other users
    of SamplingConfig (best_of_n --generate) leave it at its default."""
    assert load_label_config(None, ["sampling.temperature=0", "sampling.n=1"]).sampling.num_trajectories == 4
    assert SamplingConfig(n=1, temperature=0.0).num_trajectories == 4


@pytest.mark.parametrize("key", ["n", "num_trajectories", "max_new_tokens"])
def test_counts_below_one_name_their_key(key):
    with pytest.raises(ConfigError, match=rf"^sampling\.{key} must be >= 1, got 0$"):
        SamplingConfig(**{key: 0})
