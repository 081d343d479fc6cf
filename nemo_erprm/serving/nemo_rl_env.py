"""NeMo-RL environment: the ER-PRM reward service as the reward of GRPO/PPO rollouts.

Matched to NVIDIA-NeMo/RL at commit 7ea279abfbeb698b092856d0dab61e7cf39bc909 (read from source:
the PyPI package ``nemo-rl`` is an empty placeholder):

- ``nemo_rl/environments/interfaces.py``: ``EnvironmentInterface.step(message_log_batch,
  metadata) -> EnvironmentReturn(observations, metadata, next_stop_strings, rewards,
  terminateds, answers)`` with ``rewards``/``terminateds`` tensors of shape [B], and
  ``global_post_process_and_metrics(batch) -> (batch, metrics)``;
- ``nemo_rl/environments/utils.py``: ``register_env(name, actor_class_fqn)`` into
  ``ENV_REGISTRY``; ``create_env`` calls ``actor_class.options(runtime_env=...).remote(env_config)``
  with the ``env.<name>`` config block, so the registered class is a Ray actor class;
- ``nemo_rl/distributed/ray_actor_environment_registry.py``: the class's FQN must also be in
  ``ACTOR_ENVIRONMENT_REGISTRY`` (its Python executable), or ``create_env`` raises.

NeMo-RL's own ``RewardModelEnvironment`` asserts ``reward_model_type == "bradley_terry"``,
so a PRM needs this environment. The policy's message log holds the chat-templated prompt in
the user turn(s) and the generation in the assistant turn(s); they are sent to ``POST /score``
as (prompt, response) and the service cleans them (``--prompt-regex`` or
``--actor-tokenizer`` for the question, end strings stripped). A sample the service cannot
score comes back with its fallback reward (never a failed step); the number of such samples
is reported by ``global_post_process_and_metrics``. Usage: :func:`register` in the GRPO
launcher before ``setup_data``, ``env_name: erprm`` in the data config and an ``env.erprm``
block (``conf/nemo_rl/grpo_erprm.yaml``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, NamedTuple, Optional

import torch

UPSTREAM_COMMIT = "7ea279abfbeb698b092856d0dab61e7cf39bc909"
ENV_NAME = "erprm"
ACTOR_FQN = "nemo_erprm.serving.nemo_rl_env.PRMRewardEnvironmentActor"

try:  # the real interface when NeMo-RL is installed (its driver and Ray workers)
    from nemo_rl.environments.interfaces import EnvironmentInterface, EnvironmentReturn
except ImportError:  # stand-ins of the same shape, so the class is usable and testable without it
    import abc

    class EnvironmentReturn(NamedTuple):  # type: ignore[no-redef]
        observations: list
        metadata: list
        next_stop_strings: list
        rewards: Any
        terminateds: Any
        answers: Optional[list]

    class EnvironmentInterface(abc.ABC):  # type: ignore[no-redef]
        @abc.abstractmethod
        def step(self, message_log_batch, metadata): ...

        @abc.abstractmethod
        def global_post_process_and_metrics(self, batch): ...


class PRMRewardEnvironment(EnvironmentInterface):
    """``env.erprm`` config: ``url`` (default ``http://127.0.0.1:8000``), ``token_env`` (name of
    an environment variable holding the bearer token, optional), ``timeout_s`` (600),
    ``max_items`` (the service's --max-items, 256), ``retries`` (3: the service being briefly
    unreachable), ``question_key`` (a metadata key holding the raw question, used instead of
    the user turn when present)."""

    def __init__(self, cfg: Optional[dict] = None):
        cfg = dict(cfg or {})
        self.url = str(cfg.get("url", "http://127.0.0.1:8000")).rstrip("/")
        token_env = cfg.get("token_env")
        self.token = os.environ.get(token_env) if token_env else None
        self.timeout_s = float(cfg.get("timeout_s", 600))
        self.max_items = int(cfg.get("max_items", 256))
        self.retries = int(cfg.get("retries", 3))
        self.question_key = cfg.get("question_key")
        self.unscorable_since_metrics = 0

    def _post(self, items: list[dict]) -> list[dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = json.dumps({"items": items}).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + "/score", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())["results"]
            except urllib.error.HTTPError as e:
                if e.code not in (503, 504) or attempt == self.retries:  # busy/timed out: retry; else raise
                    raise RuntimeError(f"reward service {self.url}: HTTP {e.code}: {e.read()[:500]!r}") from None
            except OSError:
                if attempt == self.retries:
                    raise
            time.sleep(min(2 ** attempt, 10))
        raise AssertionError("unreachable")

    def _item(self, conversation: list[dict], meta: Any) -> dict:
        prompt = "".join(str(m["content"]) for m in conversation if m.get("role") in ("system", "user"))
        if self.question_key and isinstance(meta, dict) and isinstance(meta.get(self.question_key), str):
            prompt = meta[self.question_key]
        response = "".join(str(m["content"]) for m in conversation if m.get("role") == "assistant")
        return {"prompt": prompt, "response": response}

    def step(self, message_log_batch: list[list[dict]], metadata: list[Any]) -> EnvironmentReturn:
        items = [self._item(conv, meta) for conv, meta in zip(message_log_batch, metadata)]
        results: list[dict] = []
        for start in range(0, len(items), self.max_items):
            results.extend(self._post(items[start: start + self.max_items]))
        rewards = torch.tensor([float(r["reward"]) for r in results], dtype=torch.float32)
        unscorable = [r.get("unscorable") for r in results]
        self.unscorable_since_metrics += sum(u is not None for u in unscorable)
        observations = [{"role": "environment",
                         "content": f"Environment: PRM reward {r:.4f}" + (f" (unscorable: {u})" if u else "")}
                        for r, u in zip(rewards.tolist(), unscorable)]
        return EnvironmentReturn(observations=observations, metadata=metadata,
                                 next_stop_strings=[None] * len(items), rewards=rewards,
                                 terminateds=torch.ones_like(rewards), answers=None)

    def global_post_process_and_metrics(self, batch: Any) -> tuple[Any, dict]:
        rewards = batch["rewards"].float()
        metrics = {"prm_reward_mean": rewards.mean().item(), "prm_reward_min": rewards.min().item(),
                   "prm_reward_max": rewards.max().item(), "prm_unscorable_samples": self.unscorable_since_metrics}
        if "is_end" in batch:
            metrics["fraction_of_samples_properly_ended"] = batch["is_end"].float().mean().item()
        self.unscorable_since_metrics = 0
        return batch, metrics

    def shutdown(self) -> None:
        pass


try:  # what NeMo-RL's create_env instantiates: a Ray actor class (as its own environments)
    import ray

    PRMRewardEnvironmentActor = ray.remote(max_restarts=-1, max_task_retries=-1)(PRMRewardEnvironment)
except ImportError:
    PRMRewardEnvironmentActor = None


def register(name: str = ENV_NAME) -> None:
    """Make ``env_name: <name>`` usable in NeMo-RL: the environment registry entry and the
    actor's Python executable (the driver's, as NeMo-RL's own environments)."""
    from nemo_rl.distributed.ray_actor_environment_registry import ACTOR_ENVIRONMENT_REGISTRY
    from nemo_rl.distributed.virtual_cluster import PY_EXECUTABLES
    from nemo_rl.environments.utils import ENV_REGISTRY, register_env

    ACTOR_ENVIRONMENT_REGISTRY.setdefault(ACTOR_FQN, PY_EXECUTABLES.SYSTEM)
    if name not in ENV_REGISTRY:
        register_env(name, ACTOR_FQN)
