"""Labeling one problem: trajectories -> step prefixes -> N graded completions -> ER labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from nemo_erprm.labeling.backends.base import GenerationBackend
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


def _rollout_rewards(
    problem: Problem,
    trajectories: list[list[str]],
    cfg: LabelConfig,
    backend: GenerationBackend,
    prompt: str,
    seed: int,
) -> tuple[list[list[list[float]]], list[list[list[str]]], int]:
    """Per trajectory, per rolled-out step: the rewards (and texts) of N completions."""
    n_roll = [len(s) - (1 if cfg.final_step_label == "outcome" else 0) for s in trajectories]
    prefixes = [
        "".join(steps[: i + 1]) for steps, k in zip(trajectories, n_roll) for i in range(k)
    ]
    completions = backend.generate([prompt + p for p in prefixes], cfg.sampling.n, seed) if prefixes else []
    rewards_flat = [
        [float(grade(prefix + c, problem.gold)) for c in comps] for prefix, comps in zip(prefixes, completions)
    ]
    rewards: list[list[list[float]]] = []
    texts: list[list[list[str]]] = []
    at = 0
    for k in n_roll:
        rewards.append(rewards_flat[at : at + k])
        texts.append(completions[at : at + k])
        at += k
    return rewards, texts, len(prefixes) * cfg.sampling.n


def _offline_rewards(problem: Problem, traj: OfflineTrajectory) -> tuple[list[list[float]], list[list[str]]]:
    if traj.step_rewards is not None:
        return [[float(r) for r in rs] for rs in traj.step_rewards], []
    assert traj.completions is not None
    rewards = []
    for i, comps in enumerate(traj.completions):
        prefix = "".join(traj.steps[: i + 1])
        rewards.append([float(grade(prefix + c, problem.gold)) for c in comps])
    return rewards, traj.completions


def label_problem(
    problem: Problem, index: int, cfg: LabelConfig, backend: GenerationBackend | None
) -> tuple[list[dict[str, Any]], ProblemStats]:
    """All records of one problem (one per trajectory with at least one step)."""
    stats = ProblemStats()
    seed = problem_seed(cfg.seed, problem.id)
    seg = cfg.segmentation
    meta_common = {
        "problem_index": index,
        "final_step_label": cfg.final_step_label,
        "segmentation": OmegaConf.to_container(OmegaConf.structured(seg)),
        "seed": cfg.seed,
    }

    if problem.offline:
        records = []
        for t, traj in enumerate(problem.offline):
            rewards, texts = _offline_rewards(problem, traj)
            solution = "".join(traj.steps)
            records.append(
                _record(problem, t, traj.steps, rewards, grade(solution, problem.gold), texts, cfg,
                        {**meta_common, "source": "given", "policy": {"backend": "offline"}})
            )
        return records, stats

    assert backend is not None
    prompt = backend.format_prompt(problem.question)
    if cfg.trajectories == "reference":
        solutions, source = problem.solutions, "reference"
    else:
        solutions = backend.generate([prompt], cfg.sampling.num_trajectories, seed)[0]
        source = "policy"
        stats.completions += len(solutions)
    trajectories = []
    for solution in solutions:
        steps = split_steps(solution, seg)
        if steps:
            trajectories.append(steps)
        else:
            stats.skipped_trajectories += 1
    rewards, texts, n_done = _rollout_rewards(problem, trajectories, cfg, backend, prompt, seed + 1)
    stats.completions += n_done
    meta = {
        **meta_common,
        "source": source,
        "policy": backend.describe(),
        "sampling": OmegaConf.to_container(OmegaConf.structured(cfg.sampling)),
        "prompt": prompt,
    }
    records = []
    for t, steps in enumerate(trajectories):
        outcome = grade("".join(steps), problem.gold)
        step_rewards = list(rewards[t])
        step_texts = list(texts[t])
        if cfg.final_step_label == "outcome":
            step_rewards.append([float(outcome)])
            step_texts.append([])
        records.append(_record(problem, t, steps, step_rewards, outcome, step_texts, cfg, meta))
    return records, stats


def _record(
    problem: Problem,
    t: int,
    steps: list[str],
    step_rewards: list[list[float]],
    outcome: bool,
    completions: list[list[str]],
    cfg: LabelConfig,
    meta: dict[str, Any],
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
        "outcome": bool(outcome),
        "labels": labels_for_etas(step_rewards, cfg.etas),
        "step_tag": cfg.segmentation.step_tag,
        "meta": meta,
    }
    if cfg.output.store_completions and completions:
        record["completions"] = completions
    return record
