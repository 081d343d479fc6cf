"""The generation interface shared by the `hf`, `vllm` and `offline` backends."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.backends.plan import Completion, Request, encode_prompt, prompt_requests


# vLLM's temperature range: above 2 refused, (0, 0.01) raised to 0.01 (`_MAX_TEMP`)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 2.0


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
        # vLLM's own limits (vllm/sampling_params.py `SamplingParams._verify_args` and
        # `_verify_greedy_sampling`, commit 00388f6573cc): it refuses them at the first request,
        # after the engine has loaded; here they fail before anything starts, on every backend,
        # so a config that labels with `hf` also labels with `vllm`
        for key in ("n", "num_trajectories", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"sampling.{key} must be >= 1, got {getattr(self, key)}")
        t = self.temperature
        # nan passes every comparison, so finiteness first; vLLM raises 0 < t < 0.01 to 0.01
        # (with a warning) and would not sample what `hf` samples
        if not math.isfinite(t) or not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            raise ConfigError(f"sampling.temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, "
                              f"{MAX_TEMPERATURE:g}] (vLLM's range), got {t}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if t == 0 and self.n != 1:
            raise ConfigError(greedy_needs_one("sampling.n", self.n))


def greedy_needs_one(key: str, value: int) -> str:
    """The message for a request count above 1 under greedy decoding (vLLM: "n must be 1 when
    using greedy sampling"); ``sampling.num_trajectories`` is checked where trajectories are known."""
    return (f"{key} must be 1 with sampling.temperature=0 (greedy decoding gives one completion per "
            f"prompt; vLLM refuses n > 1), got {value}")


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
    # problems whose requests go to the backend together: hundreds of sequences in flight
    # instead of one problem's few (records do not depend on it: seeds are per completion)
    window_problems: int = 8
    # vllm only
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    # VLLM_BATCH_INVARIANT=1 (vLLM beta): outputs independent of batching and scheduling, so
    # sharded, resumed and single runs give the same records (same GPU model, same vLLM version)
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        if self.name not in ("hf", "vllm", "offline"):
            raise ConfigError(f"backend.name must be hf, vllm or offline, got {self.name!r}")
        if self.batch_size < 1:
            raise ConfigError(f"backend.batch_size must be >= 1, got {self.batch_size}")
        if self.window_problems < 1:
            raise ConfigError(f"backend.window_problems must be >= 1, got {self.window_problems}")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"backend.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")


def uses_chat_template(tokenizer: Any, cfg: PromptConfig) -> bool:
    has_template = getattr(tokenizer, "chat_template", None) is not None
    return cfg.chat_template == "always" or (cfg.chat_template == "auto" and has_template)


def format_prompt(tokenizer: Any, question: str, cfg: PromptConfig) -> str:
    """The prompt text up to where the assistant's solution starts."""
    user = cfg.template.format(question=question)
    if uses_chat_template(tokenizer, cfg):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError("prompt.chat_template=always but the tokenizer has no chat template")
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return cfg.plain_format.format(user=user)


class GenerationBackend(ABC):
    """Executes request plans (:mod:`.plan`): the same prompt ids and seeds on every backend."""

    name: str = "base"
    tokenizer: Any
    prompt_cfg: PromptConfig
    # called with a count as completions finish inside ``run`` (progress bars); None: nobody asks
    on_completions: Optional[Callable[[int], None]] = None

    def format_prompt(self, question: str) -> str:
        """The policy prompt for ``question`` (solution text is appended after it)."""
        return format_prompt(self.tokenizer, question, self.prompt_cfg)

    def encode(self, text: str) -> tuple[int, ...]:
        """Token ids of a prompt (+ solution prefix) as both backends send them to the model."""
        return encode_prompt(self.tokenizer, text, uses_chat_template(self.tokenizer, self.prompt_cfg))

    @abstractmethod
    def run(self, requests: list[Request]) -> list[list[Completion]]:
        """``request.n`` completions per request, in request order."""

    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[str]]:
        """``n`` completion texts per prompt text; prompt ``i`` takes seeds ``seed + i*n ...``."""
        requests = prompt_requests([self.encode(p) for p in prompts], n, seed)
        return [[c.text for c in completions] for completions in self.run(requests)]

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


# End-of-turn markers of common chat templates: generation stops at any that is a single token.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<|end|>")


def end_token_ids(tokenizer: Any, model_eos: Any = None) -> list[int]:
    """The ids generation ends at, on every backend: the tokenizer's EOS, every end-of-turn
    marker of :data:`END_OF_TURN` that is one token here, and ``model_eos`` (an id or a list:
    the model's ``generation_config.eos_token_id``, which vLLM also stops at)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN if t in vocab}
    if model_eos is not None:
        ids |= {int(i) for i in (model_eos if isinstance(model_eos, (list, tuple)) else [model_eos])}
    return sorted(ids)

