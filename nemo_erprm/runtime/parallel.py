"""torch.distributed + megatron parallel-state setup for scripts and tests (outside NeMo).

NeMo's MegatronStrategy does this itself during training; these helpers serve the pieces
that run megatron-core directly (parity tests, benchmarks, offline scoring).
"""

from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    """A free TCP port on the loopback interface, chosen at run time."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(tp: int = 1, pp: int = 1, vpp: int | None = None, seed: int = 1234) -> None:
    """Initialise torch.distributed (env:// from torchrun, or a single local process) and
    megatron's model-parallel groups. Uses gloo on CPU, nccl on GPU."""
    from megatron.core import parallel_state, tensor_parallel

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "RANK" in os.environ:  # launched by torchrun / srun
            torch.distributed.init_process_group(backend=backend)
        else:  # a single local process; the environment is left alone for child processes
            torch.distributed.init_process_group(
                backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
            )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp,
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
