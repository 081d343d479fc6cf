"""The request plan both generation backends execute: prompts as token ids, seeds, windows.

Both `hf` and `vllm` receive the same :class:`Request` objects, so they label from identical
prompt token ids and seeds; only the sampler differs.

Seeds follow vLLM's parallel-sampling rule: a request with seed ``s`` and ``n`` completions
samples completion ``j`` with seed ``s + j`` (vLLM ``v1/engine/parallel_sampling.py``; the `hf`
backend does the same with one generator per completion). Requests of one problem take
disjoint ranges: the trajectory request ``[s, s + T)``, then step prefix ``i`` at
``s + T + i*n`` — no two completions of a problem share a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """``n`` completions of one prompt; completion ``j`` samples with seed ``seed + j``."""

    prompt_ids: tuple[int, ...]
    n: int
    seed: int

    def completion_seeds(self) -> range:
        return range(self.seed, self.seed + self.n)


@dataclass(frozen=True)
class Completion:
    text: str
    truncated: bool = False  # stopped by max_new_tokens (vLLM finish_reason == "length")


def encode_prompt(tokenizer: Any, text: str, chat_rendered: bool) -> tuple[int, ...]:
    """Token ids of a prompt (plus any solution prefix appended to it).

    A chat-template rendering already holds its special tokens (BOS included), so it is
    tokenized without adding any; a plain prompt gets the tokenizer's usual BOS.
    """
    return tuple(tokenizer(text, add_special_tokens=not chat_rendered)["input_ids"])


def trajectory_request(prompt_ids: Sequence[int], seed: int, num_trajectories: int) -> Request:
    return Request(tuple(prompt_ids), num_trajectories, seed)


def rollout_requests(prefix_ids: Sequence[Sequence[int]], seed: int, num_trajectories: int, n: int) -> list[Request]:
    """One request per step prefix, seeds past the trajectory range: ``seed + T + i*n``."""
    return [Request(tuple(ids), n, seed + num_trajectories + i * n) for i, ids in enumerate(prefix_ids)]


def prompt_requests(prompt_ids: Sequence[Sequence[int]], n: int, seed: int) -> list[Request]:
    """Independent prompts of one call (e.g. best-of-N candidates): prompt ``i`` at ``seed + i*n``."""
    return [Request(tuple(ids), n, seed + i * n) for i, ids in enumerate(prompt_ids)]


def windows(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of ``size`` items (the last may be shorter)."""
    for start in range(0, len(items), max(size, 1)):
        yield list(items[start : start + size])
