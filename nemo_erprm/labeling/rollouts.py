"""Labeling problems: trajectories -> step prefixes -> N graded completions -> ER labels.

Problems go to the backend a window at a time through the request plan
(:mod:`nemo_erprm.labeling.backends.plan`): prompt token ids, per-completion seeds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from omegaconf import OmegaConf

from nemo_erprm.labeling.backends.base import GenerationBackend
from nemo_erprm.labeling.backends.plan import Completion, rollout_requests, trajectory_request, windows
from nemo_erprm.labeling.config import LabelConfig
from nemo_erprm.labeling.er_label import labels_for_etas
from nemo_erprm.labeling.grading import grade
from nemo_erprm.labeling.problems import OfflineTrajectory, Problem
from nemo_erprm.labeling.records import RECORD_VERSION
from nemo_erprm.labeling.segmentation import split_steps


def problem_seed(run_seed: int, problem_id: str) -> int:
    """A 31-bit seed from the run seed and the problem id (independent of order and sharding)."""
    digest = hashlib.sha256(f"{run_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class ProblemStats:
    completions: int = 0
    skipped_trajectories: int = 0
    truncated: int = 0  # completions stopped by sampling.max_new_tokens


@dataclass
class _Pending:
    """One problem of a window on its way through generation."""

    index: int
    problem: Problem
    seed: int
    prompt: str = ""
    stats: ProblemStats = field(default_factory=ProblemStats)
    source: str = "reference"
    trajectories: list[list[str]] = field(default_factory=list)
    rollouts: list[list[Completion]] = field(default_factory=list)


def label_problems(
    pending: Sequence[tuple[int, Problem]], cfg: LabelConfig, backend: GenerationBackend | None
) -> Iterator[tuple[int, Problem, list[dict[str, Any]], ProblemStats]]:
    """``(index, problem, records, stats)`` for each problem, in order, labeled window by window.

    A window of ``backend.window_problems`` problems goes to the backend as two calls (all
    trajectories, then all step prefixes) instead of two per problem, so the GPU keeps hundreds
    of sequences in flight; each problem is yielded (and written) as soon as its window is done.
    Seeds are per completion, so records do not depend on the window.
    """
    size = cfg.backend.window_problems if backend is not None else 1
    for window in windows(pending, size):
        yield from _label_window(window, cfg, backend)


def label_problem(
    problem: Problem, index: int, cfg: LabelConfig, backend: GenerationBackend | None
) -> tuple[list[dict[str, Any]], ProblemStats]:
    """All records of one problem (one per trajectory with at least one step)."""
    ((_, _, records, stats),) = _label_window([(index, problem)], cfg, backend)
    return records, stats


def _meta_common(index: int, cfg: LabelConfig) -> dict[str, Any]:
    return {
        "problem_index": index,
        "final_step_label": cfg.final_step_label,
        "segmentation": OmegaConf.to_container(OmegaConf.structured(cfg.segmentation)),
        "seed": cfg.seed,
    }


def _label_offline(problem: Problem, index: int, cfg: LabelConfig) -> list[dict[str, Any]]:
    records = []
    meta = {**_meta_common(index, cfg), "source": "given", "policy": {"backend": "offline"}}
    for t, traj in enumerate(problem.offline or []):
        rewards, texts = _offline_rewards(problem, traj)
        solution = "".join(traj.steps)
        records.append(_record(problem, t, traj.steps, rewards, grade(solution, problem.gold), texts, cfg, meta))
    return records


def _rolled_out_steps(steps: list[str], cfg: LabelConfig) -> int:
    return len(steps) - (1 if cfg.final_step_label == "outcome" else 0)


def _label_window(
    window: list[tuple[int, Problem]], cfg: LabelConfig, backend: GenerationBackend | None
) -> list[tuple[int, Problem, list[dict[str, Any]], ProblemStats]]:
    if backend is None or any(problem.offline for _, problem in window):
        return [(i, p, _label_offline(p, i, cfg), ProblemStats()) for i, p in window]

    s = cfg.sampling
    todo = [_Pending(i, p, problem_seed(cfg.seed, p.id)) for i, p in window]
    for item in todo:
        item.prompt = backend.format_prompt(item.problem.question)

    if cfg.trajectories == "reference":
        solutions = [item.problem.solutions for item in todo]
    else:
        requests = [trajectory_request(backend.encode(item.prompt), item.seed, s.num_trajectories) for item in todo]
        generated = backend.run(requests)
        solutions = [[c.text for c in completions] for completions in generated]
        for item, completions in zip(todo, generated):
            item.source = "policy"
            item.stats.completions += len(completions)
            item.stats.truncated += sum(c.truncated for c in completions)
    for item, sols in zip(todo, solutions):
        for solution in sols:
            steps = split_steps(solution, cfg.segmentation)
            if steps:
                item.trajectories.append(steps)
            else:
                item.stats.skipped_trajectories += 1

    # every step prefix of every problem of the window in one call
    requests, owners = [], []
    for item in todo:
        prefixes = [
            "".join(steps[: k + 1]) for steps in item.trajectories for k in range(_rolled_out_steps(steps, cfg))
        ]
        ids = [backend.encode(item.prompt + prefix) for prefix in prefixes]
        requests += rollout_requests(ids, item.seed, s.num_trajectories, s.n)
        owners += [item] * len(prefixes)
    for item, completions in zip(owners, backend.run(requests) if requests else []):
        item.rollouts.append(completions)
        item.stats.completions += len(completions)
        item.stats.truncated += sum(c.truncated for c in completions)
    return [(item.index, item.problem, _records(item, cfg, backend), item.stats) for item in todo]


def _records(item: _Pending, cfg: LabelConfig, backend: GenerationBackend) -> list[dict[str, Any]]:
    meta = {
        **_meta_common(item.index, cfg),
        "source": item.source,
        "policy": backend.describe(),
        "sampling": OmegaConf.to_container(OmegaConf.structured(cfg.sampling)),
        "prompt": item.prompt,
    }
    problem, records, at = item.problem, [], 0
    for t, steps in enumerate(item.trajectories):
        k = _rolled_out_steps(steps, cfg)
        rollouts = item.rollouts[at : at + k]
        at += k
        step_rewards = [
            [float(grade("".join(steps[: i + 1]) + c.text, problem.gold)) for c in comps]
            for i, comps in enumerate(rollouts)
        ]
        step_texts = [[c.text for c in comps] for comps in rollouts]
        truncated = [sum(c.truncated for c in comps) for comps in rollouts]
        outcome = grade("".join(steps), problem.gold)
        if cfg.final_step_label == "outcome":
            step_rewards.append([float(outcome)])
            step_texts.append([])
            truncated.append(0)
        records.append(_record(problem, t, steps, step_rewards, outcome, step_texts, cfg, meta, truncated))
    return records


def _offline_rewards(problem: Problem, traj: OfflineTrajectory) -> tuple[list[list[float]], list[list[str]]]:
    if traj.step_rewards is not None:
        return [[float(r) for r in rs] for rs in traj.step_rewards], []
    assert traj.completions is not None
    rewards = []
    for i, comps in enumerate(traj.completions):
        prefix = "".join(traj.steps[: i + 1])
        rewards.append([float(grade(prefix + c, problem.gold)) for c in comps])
    return rewards, traj.completions


def _record(
    problem: Problem,
    t: int,
    steps: list[str],
    step_rewards: list[list[float]],
    outcome: bool,
    completions: list[list[str]],
    cfg: LabelConfig,
    meta: dict[str, Any],
    truncated: list[int] | None = None,
) -> dict[str, Any]:
    record = {
        "version": RECORD_VERSION,
        "id": f"{problem.id}/{t}",
        "problem_id": problem.id,
        "question": problem.question,
        "gold": problem.gold,
        "steps": steps,
        "step_rewards": step_rewards,
        "n_correct": [int(sum(r)) if all(x in (0.0, 1.0) for x in r) else sum(r) for r in step_rewards],
        "n_total": [len(r) for r in step_rewards],
        # generated completions cut by sampling.max_new_tokens (graded as wrong answers)
        **({"n_truncated": truncated} if truncated is not None else {}),
        "outcome": bool(outcome),
        "labels": labels_for_etas(step_rewards, cfg.etas),
        "step_tag": cfg.segmentation.step_tag,
        "meta": meta,
    }
    if cfg.output.store_completions and completions:
        record["completions"] = completions
    return record
