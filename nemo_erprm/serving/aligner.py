"""NeMo-Aligner's remote reward model contract (its ``reward_server.py``, PPO actor section
``remote_critic_rm``): a PyTriton model, by default named ``reward_model`` on port 5555, with
batched inputs ``sentences`` (bytes, optional) or ``tokens`` (int64, right-padded) +
``sequence_lengths`` (int64), and the output ``rewards`` (float32, shape (1,) per sample).

:class:`AlignerRewardModel` implements that contract on plain numpy arrays (``infer``);
:func:`serve_pytriton` binds it to PyTriton (``nvidia-pytriton``, in the serving environment
``make serve-venv``: it cannot live beside the training lock, whose torchx pins urllib3 < 1.27
while every tritonclient >= 2.42 needs urllib3 >= 2.0.7). The model is bound with NeMo-Aligner's
``max_batch_size=9999999``: the actor sends a whole rollout micro-batch in one ``infer_batch``
call, and the scorer cuts it into ``--max-batch`` micro-batches itself. The actor's token ids
are decoded with the actor's tokenizer and re-tokenized by the PRM; the prompt/response
boundary is the service's ``response_marker``. A row that cannot be scored (no marker, too
long, the step tag in it, a length outside the row) gets the fallback reward: the actor's
``future.result()`` must never raise because of one sample. It does raise, with the reason,
for a batch in which the marker occurs in no row while it was never found before
(:meth:`RewardService.split_batch`): a wrong marker must stop PPO, not feed it a constant.
"""

from __future__ import annotations

import os
import pathlib
import sysconfig
from typing import Any, Optional, Union

import numpy as np

from nemo_erprm.errors import ConfigError
from nemo_erprm.serving.service import Item, RequestError, RewardService, Unscorable

MODEL_NAME = "reward_model"
DEFAULT_PORT = 5555
MAX_BATCH = 9999999  # NeMo-Aligner's reward_server.py: the rollout batch is never refused
# (name, per-sample shape, dtype, optional) exactly as NeMo-Aligner declares them
INPUTS = (("sentences", (-1,), bytes, True), ("tokens", (-1,), np.int64, True),
          ("sequence_lengths", (-1,), np.int64, True))
OUTPUTS = (("rewards", (1,), np.float32),)


class AlignerRewardModel:
    def __init__(self, service: RewardService, actor_tokenizer: Optional[Any] = None):
        self.service, self.actor_tokenizer = service, actor_tokenizer

    def texts(self, inputs: dict[str, np.ndarray]) -> list[Union[str, Unscorable]]:
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
        out: list[Union[str, Unscorable]] = []
        for i, n in enumerate(lengths):
            if not 0 <= n <= tokens.shape[1]:
                out.append(Unscorable("bad_length", f"sequence_lengths[{i}]",
                                      f"{n} outside the row's [0, {tokens.shape[1]}] tokens"))
                continue
            out.append(self.actor_tokenizer.decode(tokens[i, :n].tolist(), skip_special_tokens=False))
        return out

    def infer(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        field = "sentences" if inputs.get("sentences") is not None else "tokens"
        items: list[Item] = []
        for i, split in enumerate(self.service.split_batch(self.texts(inputs), field)):
            if isinstance(split, Unscorable):
                items.append(split)
                continue
            prompt, response = split
            items.append(self.service.item_or_unscorable(prompt, response=response, field=f"{field}[{i}]"))
        rewards = [r.reward for r in self.service.score_items(items)]
        return {"rewards": np.asarray(rewards, dtype=np.float32).reshape(-1, 1)}


def _libpython_for_the_stub() -> None:
    """Triton's Python-backend stub links ``libpython3.X.so`` by name; where the system's copy
    is another patch release than this interpreter (pyenv, conda), the stub runs this
    interpreter's stdlib on the other C core and fails in ``initialize`` (3.11.2 core + 3.11.7
    stdlib: ``'_thread.RLock' object has no attribute '_recursion_count'``). Put this
    interpreter's own library first on the stub's search path."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("LDLIBRARY") and \
            os.path.exists(os.path.join(libdir, sysconfig.get_config_var("LDLIBRARY"))):
        paths = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in paths.split(os.pathsep):
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, paths) if p)


def serve_pytriton(model: AlignerRewardModel, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   name: str = MODEL_NAME, max_batch: int = MAX_BATCH, max_queue_delay_us: int = 2000,
                   ready: Optional[Any] = None, triton_log: Optional[str] = None) -> None:
    """Serve ``model`` until interrupted; ``ready()`` is called once the model is loaded.
    ``triton_log``: the file for Triton's own log (its ~50 start-up lines, a CUDA error line
    on a CPU machine among them); ``None`` leaves it on the console."""
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise ConfigError("--protocol aligner needs PyTriton: run it in the serving environment "
                          "(make serve-venv; .venv-serve/bin/python tools/serve_prm.py ...)") from None
    _libpython_for_the_stub()

    @batch
    def infer_fn(**inputs):
        return model.infer(**inputs)

    config = TritonConfig(http_address=host, http_port=port, allow_grpc=False, allow_metrics=False,
                          **({"log_file": pathlib.Path(triton_log)} if triton_log else {}))
    with Triton(config=config) as triton:
        triton.bind(
            model_name=name, infer_func=infer_fn,
            inputs=[Tensor(name=n, shape=s, dtype=d, optional=o) for n, s, d, o in INPUTS],
            outputs=[Tensor(name=n, shape=s, dtype=d) for n, s, d in OUTPUTS],
            config=ModelConfig(batching=True, max_batch_size=max_batch,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)),
        )
        if ready is not None:  # the server started on entering the block; bind() loaded the model
            ready()
        triton.serve()  # until SIGINT (serve_prm.py turns SIGTERM into one)
