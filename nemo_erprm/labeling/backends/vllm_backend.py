"""`vllm` backend (GPU, optional extra): `n` completions per prompt with prefix caching.

All step prefixes of a problem share the question and earlier steps, so vLLM's automatic
prefix caching computes their KV once. Each prompt gets its own sampling seed derived from
the call seed, which makes the output independent of batching and scheduling.
"""

from __future__ import annotations

from typing import Any

from nemo_erprm.errors import ConfigError
from nemo_erprm.embedded import resolve_model_path
from nemo_erprm.labeling.backends.base import (
    BackendConfig,
    GenerationBackend,
    PromptConfig,
    SamplingConfig,
    format_prompt,
)


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(
            "backend.name=vllm needs vLLM on a GPU machine (pip install 'nemo-erprm[gpu]' or use the "
            f"Docker image); on CPU use backend.name=hf. Import failed: {e}"
        ) from None
    return vllm


class VLLMBackend(GenerationBackend):
    name = "vllm"

    def __init__(self, cfg: BackendConfig, sampling: SamplingConfig, prompt: PromptConfig):
        vllm = import_vllm()
        where, gguf = resolve_model_path(cfg.model)
        self.cfg, self.sampling, self.prompt_cfg = cfg, sampling, prompt
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=f"{where}/{gguf}" if gguf else where,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching,
            dtype="auto" if cfg.dtype == "auto" else cfg.dtype,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def format_prompt(self, question: str) -> str:
        return format_prompt(self.tokenizer, question, self.prompt_cfg)

    def sampling_params(self, n: int, seed: int) -> Any:
        s = self.sampling
        return self._vllm.SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_new_tokens,
            stop=list(s.stop) or None,
            seed=seed,
        )

    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[str]]:
        params = [self.sampling_params(n, seed + i) for i in range(len(prompts))]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        return [[c.text for c in r.outputs] for r in results]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.cfg.model, "tensor_parallel_size": self.cfg.tensor_parallel_size}
