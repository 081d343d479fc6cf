"""Where this process sits in the job: its rank, the nodes and devices per node, and the
environment of helper processes (light: no torch at import, usable before NeMo loads)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from nemo_erprm.errors import ConfigError

if TYPE_CHECKING:
    from nemo_erprm.training.config import TrainConfig

# torchrun's and Slurm's per-process variables (a helper process must not inherit them)
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")


def single_process_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment for a helper process of its own (the HF export): without torchrun's and
    Slurm's rank variables, which would make it try to join this job's process group."""
    return {k: v for k, v in environ.items() if k not in LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}


def global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def devices_per_node(cfg: TrainConfig, on_gpu: bool) -> int:
    if cfg.trainer.devices:
        return cfg.trainer.devices
    for var in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if on_gpu:
        import torch

        return torch.cuda.device_count()
    return cfg.model.tensor_model_parallel_size * cfg.model.pipeline_model_parallel_size


def num_nodes(cfg: TrainConfig) -> int:
    """Nodes of this job: Slurm's count under Slurm (Lightning's SLURM environment refuses a
    ``num_nodes`` that differs from ``SLURM_NNODES``), else ``trainer.num_nodes``."""
    nnodes = os.environ.get("SLURM_NNODES", "")
    if "SLURM_JOB_ID" in os.environ and nnodes.isdigit():
        if cfg.trainer.num_nodes not in (1, int(nnodes)):
            raise ConfigError(f"trainer.num_nodes={cfg.trainer.num_nodes} but the Slurm job has {nnodes} nodes")
        return int(nnodes)
    return cfg.trainer.num_nodes
