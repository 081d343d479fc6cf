"""Generation backends behind one interface: `hf`, `vllm` (optional, GPU) and `offline`."""

from __future__ import annotations

from nemo_erprm.labeling.backends.base import (
    BackendConfig,
    GenerationBackend,
    PromptConfig,
    SamplingConfig,
    format_prompt,
)


def build_backend(cfg: BackendConfig, sampling: SamplingConfig, prompt: PromptConfig) -> GenerationBackend | None:
    """The configured backend; ``None`` for `offline` (completions come with the input)."""
    if cfg.name == "offline":
        return None
    if cfg.name == "vllm":
        from nemo_erprm.labeling.backends.vllm_backend import VLLMBackend

        return VLLMBackend(cfg, sampling, prompt)
    from nemo_erprm.labeling.backends.hf import HFBackend

    return HFBackend(cfg, sampling, prompt)


__all__ = [
    "BackendConfig",
    "GenerationBackend",
    "PromptConfig",
    "SamplingConfig",
    "build_backend",
    "format_prompt",
]
