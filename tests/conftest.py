from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import SHARED, build_tiny_llama

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_environ():
    """Tools called in-process set environment variables for their child processes
    (PYTHONWARNINGS, ERPRM_VERBOSE: nemo_erprm.runtime.logs); they must not leak into the
    subprocesses of later tests."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (CI lays ../shared beside the checkout)")
    return data


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, shared_data) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def megatron_cpu():
    """megatron-core on the CPU backend, one process (TP=PP=1), for in-process model tests."""
    from nemo_erprm.runtime.cpu_backend import enable_cpu_backend
    from nemo_erprm.runtime.parallel import init_distributed

    enable_cpu_backend()
    init_distributed(1, 1)
    yield


def tiny_transformer_config(**over):
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_erprm.runtime.cpu_backend import adapt_config_for_cpu

    kw = dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True, params_dtype=torch.float32,
        layernorm_epsilon=1e-5, calculate_per_token_loss=True,
    )
    kw.update(over)
    return adapt_config_for_cpu(TransformerConfig(**kw))
