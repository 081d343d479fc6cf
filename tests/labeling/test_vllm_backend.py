"""The vLLM backend needs vLLM and a GPU; on CPU machines it must fail with a clear message."""

import importlib.util

import pytest

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.backends import BackendConfig, PromptConfig, SamplingConfig, build_backend

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def _gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed: the missing-vLLM message cannot be checked")
def test_missing_vllm_is_a_clear_error(tmp_path):
    # an HF model folder (the default `smollm2` is GGUF, refused before vLLM is imported)
    with pytest.raises(ConfigError, match="backend.name=vllm needs vLLM on a GPU machine"):
        build_backend(BackendConfig(name="vllm", model=str(tmp_path)), SamplingConfig(), PromptConfig())


@pytest.mark.skipif(not (HAVE_VLLM and _gpu()), reason="needs vLLM and a CUDA GPU (GPU container only)")
def test_vllm_generation_is_seeded(tiny_lm_dir):
    backend = build_backend(
        BackendConfig(name="vllm", model=str(tiny_lm_dir), gpu_memory_utilization=0.3),
        SamplingConfig(n=3, max_new_tokens=16, temperature=1.0),
        PromptConfig(),
    )
    prompts = [backend.format_prompt("What is 2+2?"), backend.format_prompt("What is 3+3?")]
    a = backend.generate(prompts, 3, seed=5)
    assert len(a) == 2 and all(len(x) == 3 for x in a)
    assert backend.generate(prompts, 3, seed=5) == a  # same call, same completions
    assert backend.generate(prompts, 3, seed=6) != a
