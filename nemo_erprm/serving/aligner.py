"""NeMo-Aligner's remote reward model contract (its ``reward_server.py``, PPO actor section
``remote_critic_rm``): a PyTriton model, by default named ``reward_model`` on port 5555, with
batched inputs ``sentences`` (bytes, optional) or ``tokens`` (int64, right-padded) +
``sequence_lengths`` (int64), and the output ``rewards`` (float32, shape (1,) per sample).

:class:`AlignerRewardModel` implements that contract on plain numpy arrays (``infer``);
:func:`serve_pytriton` binds it to PyTriton (``pip install nvidia-pytriton``; it does not fit the locked
CPU environment of this project: its tritonclient needs urllib3 >= 2, so CI tests the contract
through ``infer`` directly). The actor's token ids are decoded with the actor's tokenizer and
re-tokenized by the PRM; the prompt/response boundary is the service's ``response_marker``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from nemo_erprm.errors import ConfigError
from nemo_erprm.serving.service import RequestError, RewardService

MODEL_NAME = "reward_model"
DEFAULT_PORT = 5555
# (name, per-sample shape, dtype, optional) exactly as NeMo-Aligner declares them
INPUTS = (("sentences", (-1,), bytes, True), ("tokens", (-1,), np.int64, True),
          ("sequence_lengths", (-1,), np.int64, True))
OUTPUTS = (("rewards", (1,), np.float32),)


class AlignerRewardModel:
    def __init__(self, service: RewardService, actor_tokenizer: Optional[Any] = None):
        self.service, self.actor_tokenizer = service, actor_tokenizer

    def texts(self, inputs: dict[str, np.ndarray]) -> list[str]:
        if "sentences" in inputs and inputs["sentences"] is not None:
            raw = np.asarray(inputs["sentences"]).reshape(len(inputs["sentences"]), -1)[:, 0]
            return [s.decode("utf-8") if isinstance(s, (bytes, np.bytes_)) else str(s) for s in raw]
        if "tokens" not in inputs or "sequence_lengths" not in inputs:
            raise RequestError("tokens", "send 'sentences', or 'tokens' with 'sequence_lengths'")
        if self.actor_tokenizer is None:
            raise RequestError("tokens", "token input needs the actor's tokenizer (--actor-tokenizer)")
        tokens = np.asarray(inputs["tokens"], dtype=np.int64)
        lengths = np.asarray(inputs["sequence_lengths"], dtype=np.int64).reshape(-1)
        if tokens.ndim != 2 or len(lengths) != tokens.shape[0]:
            raise RequestError("sequence_lengths", f"one length per row of tokens {tokens.shape}")
        if (lengths < 0).any() or (lengths > tokens.shape[1]).any():
            raise RequestError("sequence_lengths", f"lengths must lie in [0, {tokens.shape[1]}]")
        return [self.actor_tokenizer.decode(tokens[i, : lengths[i]].tolist(), skip_special_tokens=False)
                for i in range(len(lengths))]

    def infer(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        texts = self.texts(inputs)
        items = []
        for i, text in enumerate(texts):
            prompt, response = self.service.split_text(text, f"sample[{i}]")
            items.append(self.service.to_item(prompt, response=response, field=f"sample[{i}]"))
        rewards = [r.reward for r in self.service.score_items(items)]
        return {"rewards": np.asarray(rewards, dtype=np.float32).reshape(-1, 1)}


def serve_pytriton(model: AlignerRewardModel, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   name: str = MODEL_NAME, max_batch: int = 64, max_queue_delay_us: int = 2000) -> None:
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise ConfigError("--protocol aligner needs PyTriton: pip install nvidia-pytriton (GPU image)") from None

    @batch
    def infer_fn(**inputs):
        return model.infer(**inputs)

    config = TritonConfig(http_address=host, http_port=port, allow_grpc=False, allow_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=name, infer_func=infer_fn,
            inputs=[Tensor(name=n, shape=s, dtype=d, optional=o) for n, s, d, o in INPUTS],
            outputs=[Tensor(name=n, shape=s, dtype=d) for n, s, d in OUTPUTS],
            config=ModelConfig(batching=True, max_batch_size=max_batch,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)),
        )
        triton.serve()
