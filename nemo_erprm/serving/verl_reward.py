"""verl custom reward functions backed by the PRM service (matched to verl b178a3c).

In a verl config::

    custom_reward_function:
      path: /path/to/nemo-erprm/nemo_erprm/serving/verl_reward.py
      name: compute_score              # naive / dapo / reward-loop managers (one sample per call)
      # name: compute_score_batch      # with reward_model.reward_manager=batch (one call per batch)

with ``ERPRM_REWARD_URL`` (default ``http://127.0.0.1:8000``) and optional ``ERPRM_REWARD_TOKEN``
in the environment of verl's reward workers.

verl calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **extra)``:
``get_custom_reward_fn`` merges ``custom_reward_function.reward_kwargs`` into every call, and
the reward-loop managers add ``reward_router_address`` / ``reward_model_tokenizer``; all of
them are accepted and ignored. The batch manager calls ``compute_score(data_sources=,
solution_strs=, ground_truths=, extra_infos=, **reward_kwargs)``: :func:`compute_score_batch`
sends those in one ``/score`` request. ``solution_str`` is decoded with
``skip_special_tokens=True`` (no end strings left). The question comes from ``extra_info``
(``question``, ``problem``, ``prompt``, ``raw_prompt``); verl's gsm8k preprocessing puts
``question`` there, its ``math_dataset.py`` does not: map :func:`add_question` over such a
dataset. A sample without a question, or one the service cannot score, gets the service's
fallback reward (its ``--fallback-reward``, by default the floor: -0.5 with ``--transform
minus_half``, never above the floor) and a logged warning, never an exception: a raise here
stops the PPO step. A sample without a question is sent with an empty prompt, so the service
answers it (``empty_prompt``): one source for the fallback, counted in the service's
``/metrics`` and its fallback-rate alarm like every other unscorable sample.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any, Optional, Sequence

log = logging.getLogger("nemo_erprm.serving.verl_reward")
QUESTION_KEYS = ("question", "problem", "prompt", "raw_prompt")


def _question(extra_info: Optional[dict]) -> Optional[str]:
    info = extra_info if isinstance(extra_info, dict) else {}
    for key in QUESTION_KEYS:
        value = info.get(key)
        if isinstance(value, list):  # chat messages: the last user turn
            value = next((m.get("content") for m in reversed(value) if isinstance(m, dict) and m.get("role") == "user"),
                         None)
        if isinstance(value, str) and value.strip():
            return value
    return None


def add_question(example: dict) -> dict:
    """For ``datasets.map`` over verl-format rows: copy the last user message of ``prompt``
    into ``extra_info["question"]`` (verl's math_dataset.py leaves it out)."""
    extra = dict(example.get("extra_info") or {})
    if not _question(extra):
        extra["question"] = _question({"prompt": example.get("prompt")}) or ""
    return {**example, "extra_info": extra}


def _post(items: list[dict], timeout_s: float) -> list[dict]:
    url = os.environ.get("ERPRM_REWARD_URL", "http://127.0.0.1:8000").rstrip("/") + "/score"
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ERPRM_REWARD_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['ERPRM_REWARD_TOKEN']}"
    req = urllib.request.Request(url, data=json.dumps({"items": items}).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())["results"]


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any] = (),
                        extra_infos: Sequence[Optional[dict]] = (), timeout_s: float = 600.0,
                        max_items: int = 256, **_: Any) -> list[float]:
    """One reward per solution (verl's batch reward manager); unscorable ones get the
    service's fallback."""
    extra_infos = list(extra_infos) or [None] * len(solution_strs)
    items = []
    for i, (solution, info) in enumerate(zip(solution_strs, extra_infos)):
        question = _question(info)
        if question is None:  # the service answers it with its fallback (reason empty_prompt)
            log.warning("verl sample %d: no question in extra_info (%s) -> the service's fallback reward", i,
                        "/".join(QUESTION_KEYS))
        items.append({"prompt": question or "", "response": solution})
    rewards: list[float] = []
    for start in range(0, len(items), max_items):  # the service's --max-items per request
        rewards.extend(float(r["reward"]) for r in _post(items[start: start + max_items], timeout_s))
    return rewards


def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                  extra_info: Optional[dict] = None, timeout_s: float = 60.0, **_: Any) -> float:
    """One sample's reward (verl's naive / reward-loop managers); extra keyword arguments
    (``reward_kwargs``, ``reward_router_address``, ``reward_model_tokenizer``) are ignored."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], timeout_s=timeout_s)[0]
