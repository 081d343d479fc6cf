"""The generation interface shared by the `hf`, `vllm` and `offline` backends."""

from __future__ import annotations

from nemo_erprm.errors import ConfigError

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplingConfig:
    """How completions are sampled (paper: N=16 completions per step prefix)."""

    n: int = 16
    num_trajectories: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n < 1 or self.num_trajectories < 1:
            raise ConfigError("sampling.n and sampling.num_trajectories must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("sampling.temperature must be >= 0 and sampling.top_p in (0, 1]")
        if self.max_new_tokens < 1:
            raise ConfigError("sampling.max_new_tokens must be >= 1")


@dataclass
class PromptConfig:
    """How a question becomes the policy's prompt.

    ``template`` builds the user message. With ``chat_template: auto`` the tokenizer's chat
    template is used when it has one, else ``plain_format``; ``always``/``never`` force it.
    The solution prefix (steps so far) is appended verbatim after the assistant turn opens.
    """

    template: str = (
        "{question}\nSolve it step by step, one step per line, and write the final answer "
        "on the last line as '#### <answer>'."
    )
    chat_template: str = "auto"
    system: str | None = None
    plain_format: str = "Question: {user}\nAnswer: "

    def __post_init__(self) -> None:
        if self.chat_template not in ("auto", "always", "never"):
            raise ConfigError("prompt.chat_template must be auto, always or never")
        if "{question}" not in self.template:
            raise ConfigError("prompt.template must contain '{question}'")


@dataclass
class BackendConfig:
    """Which generation backend and model. ``model``: HF directory, .gguf file or 'smollm2'."""

    name: str = "hf"
    model: str = "smollm2"
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    # vllm only
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.name not in ("hf", "vllm", "offline"):
            raise ConfigError(f"backend.name must be hf, vllm or offline, got {self.name!r}")


def format_prompt(tokenizer: Any, question: str, cfg: PromptConfig) -> str:
    """The prompt text up to where the assistant's solution starts."""
    user = cfg.template.format(question=question)
    has_template = getattr(tokenizer, "chat_template", None) is not None
    use_chat = cfg.chat_template == "always" or (cfg.chat_template == "auto" and has_template)
    if use_chat:
        if not has_template:
            raise ConfigError("prompt.chat_template=always but the tokenizer has no chat template")
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return cfg.plain_format.format(user=user)


class GenerationBackend(ABC):
    """Samples continuations. Deterministic for a given (prompts, n, seed) call."""

    name: str = "base"

    @abstractmethod
    def format_prompt(self, question: str) -> str:
        """The policy prompt for ``question`` (solution text is appended after it)."""

    @abstractmethod
    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[str]]:
        """``n`` sampled continuations (text only) for each prompt, in prompt order."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Metadata stored in every record (model, backend, dtype...)."""

    def close(self) -> None:  # pragma: no cover - backends with resources override
        pass


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """Cut ``text`` at the first occurrence of any stop string (the stop string excluded)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]
