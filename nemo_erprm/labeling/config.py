"""`LabelConfig`: the labeling stage's one config dataclass, loaded from YAML with OmegaConf."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from omegaconf import OmegaConf

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.backends.base import (
    BackendConfig,
    PromptConfig,
    SamplingConfig,
    greedy_needs_one,
)
from nemo_erprm.labeling.problems import InputConfig
from nemo_erprm.labeling.segmentation import SegmentationConfig


@dataclass
class OutputConfig:
    dir: str = "outputs/labels"
    store_completions: bool = False


@dataclass
class LabelConfig:
    """Everything a labeling run needs.

    trajectories: ``reference`` labels the solutions given in the input; ``policy`` samples
        ``sampling.num_trajectories`` solutions per problem from the policy first.
    final_step_label: ``outcome`` labels the last step with the correctness of the whole
        solution (paper); ``rollout`` samples completions for it like any other step.
    etas: labels stored in every record (any others are re-derived later with ``relabel``).
    """

    input: InputConfig = field(default_factory=InputConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    trajectories: str = "reference"
    final_step_label: str = "outcome"
    etas: list[float] = field(default_factory=lambda: [0.0, 2.0, 10.0, math.inf])
    seed: int = 1234

    def validate(self) -> "LabelConfig":
        if self.trajectories not in ("reference", "policy"):
            raise ConfigError(f"trajectories must be reference or policy, got {self.trajectories!r}")
        if self.final_step_label not in ("outcome", "rollout"):
            raise ConfigError(f"final_step_label must be outcome or rollout, got {self.final_step_label!r}")
        if not self.etas:  # nan in them is refused with every other number (yaml_config.check_numbers)
            raise ConfigError("etas must be a non-empty list of real numbers (or .inf / -.inf)")
        offline_input = self.input.format == "offline"
        if offline_input != (self.backend.name == "offline"):
            raise ConfigError("input.format=offline and backend.name=offline go together")
        if self.trajectories == "policy" and self.backend.name == "offline":
            raise ConfigError("trajectories=policy needs a generating backend (hf or vllm)")
        if self.trajectories == "policy" and self.sampling.temperature == 0 and self.sampling.num_trajectories != 1:
            raise ConfigError(greedy_needs_one("sampling.num_trajectories", self.sampling.num_trajectories))
        return self

    def identity(self) -> dict[str, Any]:
        """The settings that determine the records: a resumed run must match them exactly."""
        cfg = OmegaConf.to_container(OmegaConf.structured(self), resolve=True)
        assert isinstance(cfg, dict)
        cfg.pop("output")
        kept = ("name", "model", "dtype")
        if self.backend.name == "vllm":
            # vLLM is not batch-invariant by default: another version or TP size gives other
            # logits, so a resume under either would mix records of two samplers
            from nemo_erprm.labeling.backends.vllm_backend import installed_vllm_version

            kept += ("tensor_parallel_size", "batch_invariant")
            cfg["backend"]["vllm_version"] = installed_vllm_version()
            kept += ("vllm_version",)
        cfg["backend"] = {k: cfg["backend"][k] for k in kept}
        return cfg


def load_label_config(path: str | None = None, overrides: Sequence[str] = ()) -> LabelConfig:
    """Schema defaults <- YAML file <- ``key=value`` overrides, type-checked by OmegaConf."""
    from nemo_erprm.yaml_config import load_structured

    return load_structured(LabelConfig, path, overrides).validate()


def dump_config(cfg: LabelConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
