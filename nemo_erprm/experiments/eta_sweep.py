"""The η-sweep experiment: one set of rollouts → soft, ER and hard labels → one PRM each →
Best-of-N and first-error F1 against exact step ground truth.

    python -m nemo_erprm.experiments.eta_sweep --config conf/experiments/arith_cpu.yaml [key=value ...]

Per seed (``seeds``: each its own task, policy, rollouts and PRMs), every stage is a command of
this project, run in a fresh process and reused on a rerun while its settings are unchanged
(:mod:`nemo_erprm.experiments.stages`):

1. task        python -m nemo_erprm.experiments.arith_task: train / val / test problems
2. policy      python -m nemo_erprm.experiments.arith_policy: the policy (transformers Trainer)
3. label       tools/label_rollouts.py: the policy's solutions of the train problems, N
               completions per step prefix, labels for every η from the same outcomes
4. orm labels  tools/label_rollouts.py (offline input): every step labeled with its
               solution's outcome, for the outcome-only reward model
5. backbone    (optional, ``backbone.args`` set) python -m nemo_erprm.experiments.arith_policy:
               the PRM's backbone, the same model family trained further on the same problems
   convert     tools/convert_hf_checkpoint.py: the backbone (by default the policy itself) →
               the PRM's starting checkpoint; one per starting model the grid names (``init``:
               policy, policy_last = the policy run's last step, backbone)
6. candidates  tools/best_of_n.py --generate: the policy's candidates for val and test problems
7. train       python -m nemo_erprm.train: one PRM per (label set, grid point)
8. select      tools/best_of_n.py on the **validation** candidates; the grid point (lr,
               epochs, init) with the best mean Best-of-N over label sets is chosen, once, on
               the first seed; the other seeds train at that point only
9. evaluate    tools/best_of_n.py on the **test** candidates, with ProcessBench-style
               first-error F1 (threshold chosen on the validation candidates); the untrained
               PRM is the chosen init's
   probes      (optional, ``probes: [corruption]``) python -m nemo_erprm.experiments.probes on
               the test problems' reference solutions, per PRM; reported only
10. report     report.md / report.json / plots (:mod:`.sweep_report`; the probes' section added)

The test split is read by stage 9, the probes and the report only. With ``parallel`` > 1,
stages that do not feed each other (label / convert / candidates; the PRMs' training; their
Best-of-N runs; the probes) run side by side (conf/experiments/arith_gpu.yaml: one GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence, TypeVar

from omegaconf import OmegaConf

from nemo_erprm.errors import ConfigError
from nemo_erprm.experiments.arith_policy import LAST
from nemo_erprm.experiments.stages import REPO, StageError, Stages, file_digest
from nemo_erprm.jsonl import iter_jsonl, write_jsonl_atomic


@dataclass
class TaskSizes:
    """``train``: all training problems; the first ``label_problems`` are the PRM's (labeled
    from the policy's rollouts), the rest the policy's, so the policy never saw a problem
    it is rolled out on (as at test time)."""

    train: int = 4300
    label_problems: int = 300
    val: int = 100
    test: int = 200
    min_steps: int = 2
    max_steps: int = 5


@dataclass
class PolicySettings:
    """Arguments of ``python -m nemo_erprm.experiments.arith_policy`` (flag → value)."""

    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackboneSettings:
    """The PRM's backbone. Empty ``args``: the policy itself (the paper's setting, a PRM that
    starts from the model family it judges). Set: a second ``arith_policy`` run on the same
    problems with these flags (e.g. ``{steps: 6000}``), for a backbone that knows the skill
    the policy's samples get wrong better than the policy does (on seed 1, the likelihood of
    a 6000-step model separates the policy's right and wrong steps with AUC 0.98, the policy's
    own 0.78: docs/experiments/arith_cpu/FINDINGS.md)."""

    args: dict[str, Any] = field(default_factory=dict)


INITS = ("policy", "policy_last", "backbone")


@dataclass
class GridPoint:
    lr: float = 1e-3
    epochs: float = 2.0
    # the PRMs' starting model: policy | policy_last (the policy run's last step, when its
    # `eval_every` kept an earlier one) | backbone; null: the sweep's default (the backbone when
    # `backbone.args` is set, else the policy). Chosen on validation like lr and epochs.
    init: Optional[str] = None

    @property
    def key(self) -> str:
        return f"lr{self.lr:g}_ep{self.epochs:g}" + (f"_{self.init}" if self.init else "")


@dataclass
class EvalSettings:
    n: int = 16                      # candidates per val/test problem
    temperature: float = 0.7
    max_new_tokens: int = 96
    aggregation: str = "min"         # the headline aggregation (the paper's); all four are in the JSON
    select_n: int = 8                # the N the selection on validation maximises
    subsets: int = 100
    bootstrap: int = 1000
    processbench_per_problem: int = 4  # candidates per problem in the first-error sets
    generate_batch: int = 1          # problems sampled together (tools/best_of_n.py --generate-batch; a GPU wants many)


@dataclass
class SweepConfig:
    name: str = "arith_cpu"
    executor: str = "local"          # slurm: conf/experiments/paper_gsm8k_mistral.yaml (nemo_erprm.experiments.slurm_sweep)
    out: str = "outputs/experiments/arith_cpu"
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    task: TaskSizes = field(default_factory=TaskSizes)
    policy: PolicySettings = field(default_factory=PolicySettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    label_config: str = "conf/experiments/arith_label.yaml"
    label_overrides: list[str] = field(default_factory=list)
    etas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 5.0, 10.0, math.inf])
    outcome_rm: bool = True
    train_config: str = "conf/experiments/arith_train.yaml"
    train_overrides: list[str] = field(default_factory=list)
    grid: list[GridPoint] = field(default_factory=lambda: [GridPoint()])
    eval: EvalSettings = field(default_factory=EvalSettings)
    # step-checking probes per PRM on the test problems' reference solutions, added to the
    # report: [corruption] (nemo_erprm.experiments.probes; reported only, never used for a choice)
    probes: list[str] = field(default_factory=list)
    # independent stages run at once (the PRMs' training, Best-of-N, probes): 1 on a shared
    # CPU; several on a GPU, where one small PRM's process leaves the device mostly idle
    parallel: int = 1

    def validate(self) -> "SweepConfig":
        if self.executor != "local":
            raise ConfigError(f"executor={self.executor!r}: this config runs locally (executor: local)")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: repeated seed in {self.seeds}")
        if not self.grid:
            raise ConfigError("grid: give at least one (lr, epochs) point")
        for i, point in enumerate(self.grid):
            if point.init not in (None, *INITS):
                raise ConfigError(f"grid[{i}].init={point.init!r}: must be one of {', '.join(INITS)} (or null)")
            if point.init == "backbone" and not self.backbone.args:
                raise ConfigError(f"grid[{i}].init=backbone needs backbone.args (the backbone's arith_policy flags)")
            if point.init == "policy_last" and not self.policy.args.get("eval_every"):
                raise ConfigError(f"grid[{i}].init=policy_last needs policy.args.eval_every (the policy run then "
                                  "keeps its last step beside the chosen checkpoint)")
        if len({p.key for p in self.grid}) != len(self.grid):
            raise ConfigError("grid: repeated (lr, epochs, init) point")
        unknown = sorted(set(self.probes) - set(PROBES))
        if unknown:
            raise ConfigError(f"probes: unknown {unknown}; known: {', '.join(PROBES)}")
        if self.parallel < 1:
            raise ConfigError(f"parallel must be >= 1, got {self.parallel}")
        if self.eval.generate_batch < 1:
            raise ConfigError(f"eval.generate_batch must be >= 1, got {self.eval.generate_batch}")
        if self.eval.aggregation not in ("min", "last", "mean", "product"):
            raise ConfigError(f"eval.aggregation must be min, last, mean or product, got {self.eval.aggregation!r}")
        if not 1 <= self.eval.select_n <= self.eval.n:
            raise ConfigError(f"eval.select_n={self.eval.select_n} must be in [1, eval.n={self.eval.n}]")
        for key in ("label_problems", "val", "test"):
            if getattr(self.task, key) < 2:
                raise ConfigError(f"task.{key} must be >= 2")
        if self.task.train < self.task.label_problems + 2:
            raise ConfigError(f"task.train={self.task.train} must exceed task.label_problems="
                              f"{self.task.label_problems} by at least 2 (the rest train the policy)")
        return self

    def default_init(self) -> str:
        return "backbone" if self.backbone.args else "policy"

    def label_sets(self) -> dict[str, float]:
        """Label-set name → the η the trainer selects (the ORM's records carry its labels under every η)."""
        from nemo_erprm.labeling.er_label import eta_key

        sets = {f"eta{eta_key(e)}": e for e in self.etas}
        if self.outcome_rm:
            sets["orm"] = 0.0
        return sets


PROBES = ("corruption",)


def load_sweep_config(path: str, overrides: list[str]) -> SweepConfig:
    from nemo_erprm.yaml_config import load_structured

    return load_structured(SweepConfig, path, overrides).validate()


def executor_of(path: str, overrides: list[str]) -> str:
    """``local`` (this module runs every stage) or ``slurm`` (:mod:`.slurm_sweep` submits them)."""
    for o in overrides:
        if o.startswith("executor="):
            return o.split("=", 1)[1]
    try:
        return str(OmegaConf.load(path).get("executor", "local"))
    except Exception:  # unreadable: load_sweep_config reports it with the file's name
        return "local"


def _eta_arg(eta: float) -> str:
    return ".inf" if eta == math.inf else ("-.inf" if eta == -math.inf else repr(float(eta)))


def orm_offline_input(records: Path, out: Path) -> None:
    """Offline labeling input for the outcome-only RM: the same trajectories, every step's one
    'completion' scored with the whole solution's outcome."""
    rows = []
    for _, r in iter_jsonl(records):
        rows.append({"id": r["id"].replace("/", "-"), "question": r["question"], "gold": r["gold"],
                     "steps": [s.rstrip("\n") for s in r["steps"]],
                     "step_rewards": [[1.0 if r["outcome"] else 0.0]] * len(r["steps"])})
    write_jsonl_atomic(out, rows)


def processbench_file(candidates: Path, problems: Path, out: Path, per_problem: int) -> None:
    """First-error samples with exact labels: the first ``per_problem`` candidates of each problem,
    segmented as Best-of-N segments them, labeled by the task's exact step checker."""
    from nemo_erprm.experiments.arith_task import to_processbench
    from nemo_erprm.labeling.segmentation import SegmentationConfig, split_steps

    by_q = {p["question"]: p for _, p in iter_jsonl(problems)}
    rows = []
    for _, rec in iter_jsonl(candidates):
        problem = by_q[rec["question"]]
        for i, text in enumerate(rec["candidates"][:per_problem]):
            steps = [s.strip() for s in split_steps(text, SegmentationConfig())]
            if not steps:
                continue
            row = to_processbench(problem, steps)
            row["id"] = f"{rec['id']}/{i}"
            rows.append(row)
    write_jsonl_atomic(out, rows)


T, R = TypeVar("T"), TypeVar("R")


def run_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]`` with up to ``workers`` at once (each ``fn`` runs stages, i.e.
    subprocesses); every item runs even when one fails, then the first failure is raised."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, x) for x in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def reference_candidates(problems: Path, out: Path) -> None:
    """The problems' reference solutions as a one-candidate-per-problem candidates file: the
    probes' input, right at every step whatever the policy solves."""
    rows = [{"id": p["id"], "question": p["question"], "gold": p["answer"].rsplit("####", 1)[-1].strip(),
             "candidates": [p["answer"]]} for _, p in iter_jsonl(problems)]
    write_jsonl_atomic(out, rows)


class SeedRun:
    """The stages of one seed."""

    def __init__(self, cfg: SweepConfig, seed: int, root: Path, stages: Stages):
        self.cfg, self.seed, self.stages = cfg, seed, stages
        self.dir = root / f"seed{seed}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.py = sys.executable

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def stage(self, name: str, **kw: Any) -> bool:
        if self.cfg.parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
            # side by side, each stage's torch gets its share of the cores (oversubscribed
            # intra-op threads slowed small CPU stages up to tenfold)
            kw.setdefault("env", {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.cfg.parallel))})
        return self.stages.run(f"seed{self.seed}.{name}", **kw)

    def arith_model(self, name: str, args: dict[str, Any], problems: Path, estimate_s: float) -> tuple[Path, str]:
        """Stage ``name``: ``arith_policy`` with ``args`` on ``problems`` into ``<seed dir>/<name>``
        (the policy, or the PRM's backbone); returns the folder and its weights' digest."""
        out = self.path(name)
        flags = [x for k, v in sorted(args.items()) for x in (f"--{k.replace('_', '-')}", v)]
        self.stage(name, settings={"task": file_digest(problems), "seed": self.seed, "args": args},
                   cmd=[self.py, "-m", "nemo_erprm.experiments.arith_policy", "--train", problems,
                        "--val", self.path("task", "val.jsonl"), "--out", out, "--seed", self.seed, *flags],
                   output=out, estimate_s=estimate_s, produced=lambda: (out / "policy_summary.json").exists())
        return out, file_digest(out / "model.safetensors")

    # 1-6: data, policy, labels, checkpoint, candidates
    def prepare(self) -> None:
        cfg, t = self.cfg, self.cfg.task
        task = self.path("task")
        self.stage("task", settings={"seed": self.seed, **asdict(t)},
                   cmd=[self.py, "-m", "nemo_erprm.experiments.arith_task", "--seed", self.seed, "--train", t.train,
                        "--val", t.val, "--test", t.test, "--min-steps", t.min_steps, "--max-steps", t.max_steps,
                        "--out", task],
                   output=task, estimate_s=5, produced=lambda: (task / "manifest.json").exists())
        # the policy's problems and the PRM's: disjoint parts of the train split
        train = list(iter_jsonl(task / "train.jsonl"))
        prm_problems, policy_problems = task / "prm_train.jsonl", task / "policy_train.jsonl"
        write_jsonl_atomic(prm_problems, [r for _, r in train[: t.label_problems]])
        write_jsonl_atomic(policy_problems, [r for _, r in train[t.label_problems:]])
        self.prm_problems = prm_problems
        policy, policy_digest = self.arith_model("policy", cfg.policy.args, policy_problems, estimate_s=300)

        sources = {"policy": (policy, policy_digest)}
        if any(p.init == "policy_last" for p in cfg.grid):
            sources["policy_last"] = (policy / LAST, file_digest(policy / LAST / "model.safetensors"))
        if cfg.backbone.args:
            sources["backbone"] = self.arith_model("backbone", cfg.backbone.args, policy_problems, estimate_s=600)
        # what follows reads the policy only: labels, the PRMs' starting checkpoints and the
        # candidates run side by side with `parallel` > 1
        default = cfg.default_init()
        inits = sorted({p.init or default for p in cfg.grid})
        self.records, self.inits, self.candidates, self.processbench = {}, {}, {}, {}
        jobs = [lambda: self.label(policy, policy_digest),
                *(lambda i=init: self.convert(i, default, sources, policy_digest) for init in inits),
                *(lambda sp=split: self.generate(sp, policy, policy_digest) for split in ("val", "test"))]
        run_parallel(lambda job: job(), jobs, cfg.parallel)
        self.init = self.inits.get(default)
        if cfg.probes:
            self.reference = self.path("reference_test.jsonl")
            reference_candidates(task / "test.jsonl", self.reference)

    def label(self, policy: Path, policy_digest: str) -> None:
        """Stages ``label`` (the policy's rollouts, every η) and ``orm_labels``."""
        cfg, prm_problems = self.cfg, self.prm_problems
        labels = self.path("labels")
        overrides = [f"input.path={prm_problems}", f"backend.model={policy}", f"output.dir={labels}",
                     f"seed={self.seed}", f"etas=[{','.join(_eta_arg(e) for e in cfg.etas)}]", *cfg.label_overrides]
        self.stage("label", settings={"policy": policy_digest, "problems": file_digest(prm_problems),
                                      "config": file_digest(REPO / cfg.label_config),
                                      "overrides": overrides[3:]},
                   cmd=[self.py, "tools/label_rollouts.py", "--config", cfg.label_config, *overrides],
                   output=labels, estimate_s=600,
                   produced=lambda: (labels / "summary.shard-00000-of-00001.json").exists())
        records = {name: labels / "records.shard-00000-of-00001.jsonl" for name in cfg.label_sets()}
        if cfg.outcome_rm:
            orm_in = self.path("orm_input.jsonl")
            orm_offline_input(labels / "records.shard-00000-of-00001.jsonl", orm_in)
            orm = self.path("labels_orm")
            self.stage("orm_labels", settings={"input": file_digest(orm_in)},
                       cmd=[self.py, "tools/label_rollouts.py", f"input.path={orm_in}", "input.format=offline",
                            "input.id_field=id", "backend.name=offline", f"output.dir={orm}", "etas=[0]", f"seed={self.seed}"],
                       output=orm, estimate_s=10,
                       produced=lambda: (orm / "summary.shard-00000-of-00001.json").exists())
            records["orm"] = orm / "records.shard-00000-of-00001.jsonl"
        self.records.update(records)

    def convert(self, init: str, default: str, sources: dict[str, tuple[Path, str]], policy_digest: str) -> None:
        """The PRMs' starting checkpoint for ``init``: the default init in ``prm_init`` (stage
        ``convert``), another init a grid point names in ``prm_init_<init>`` (``convert_<init>``)."""
        hf_dir, digest = sources[init]
        out = self.path("prm_init" if init == default else f"prm_init_{init}")
        settings = ({"policy": policy_digest} | ({"backbone": digest} if self.cfg.backbone.args else {})
                    if init == default else {"init": init, "digest": digest})
        self.stage("convert" if init == default else f"convert_{init}", settings=settings,
                   cmd=[self.py, "tools/convert_hf_checkpoint.py", "--hf-dir", hf_dir, "--out", out,
                        "--head", "lm_tokens"],
                   output=out, estimate_s=30, produced=lambda: (out / "prm_config.json").exists())
        self.inits[init] = out

    def generate(self, split: str, policy: Path, policy_digest: str) -> None:
        """Stage ``candidates_<split>``: the policy's candidates; then the first-error file."""
        e, task = self.cfg.eval, self.path("task")
        out = self.path("candidates", split)
        self.stage(f"candidates_{split}",
                   settings={"policy": policy_digest, "problems": file_digest(task / f"{split}.jsonl"),
                             "n": e.n, "temperature": e.temperature, "max_new_tokens": e.max_new_tokens},
                   cmd=[self.py, "tools/best_of_n.py", "--generate", e.n, "--policy", policy,
                        "--generate-batch", e.generate_batch,
                        "--problems", task / f"{split}.jsonl", "--problems-format", "gsm8k",
                        "--temperature", e.temperature, "--max-new-tokens", e.max_new_tokens,
                        "--seed", self.seed, "--scorer", "none", "--out", out, "--bootstrap", 0, "--no-progress"],
                   output=out, estimate_s=120, produced=lambda: (out / "report.json").exists())
        self.candidates[split] = out / "candidates.jsonl"
        self.processbench[split] = self.path(f"processbench_{split}.jsonl")
        processbench_file(self.candidates[split], task / f"{split}.jsonl", self.processbench[split],
                          e.processbench_per_problem)

    def init_of(self, point: GridPoint) -> Path:
        return self.inits[point.init or self.cfg.default_init()]

    # 7: training
    def train(self, name: str, eta: float, point: GridPoint) -> Path:
        from nemo_erprm.training.checkpoints import last_checkpoint

        cfg = self.cfg
        root = self.path("train", f"{name}_{point.key}")
        init = self.init_of(point)
        overrides = [f"model.init_from={init}", f"data.train={self.records[name]}", f"data.eta={_eta_arg(eta)}",
                     f"optim.lr={point.lr!r}", f"trainer.max_epochs={point.epochs!r}", f"run.output_dir={root}",
                     f"run.seed={self.seed}", *cfg.train_overrides]
        self.stage(f"train.{name}.{point.key}",
                   settings={"init": file_digest(init / "prm_config.json"),
                             "records": file_digest(self.records[name]), "config": file_digest(REPO / cfg.train_config),
                             "overrides": overrides[2:]},
                   cmd=[self.py, "-m", "nemo_erprm.train", "--config", cfg.train_config, *overrides],
                   output=root, estimate_s=90, produced=lambda: last_checkpoint(root / "prm") is not None)
        ckpt = last_checkpoint(root / "prm")
        assert ckpt is not None
        return ckpt

    # 8-9: Best-of-N (+ first-error F1 on test)
    def evaluate(self, split: str, name: str, scorer: Path) -> Path:
        from nemo_erprm.eval.scorers import directory_fingerprint

        e = self.cfg.eval
        out = self.path("bon", split, name)
        extra = []
        if split == "test":
            extra = ["--processbench", self.processbench["test"],
                     "--processbench-threshold-split", self.processbench["val"]]
        self.stage(f"bon_{split}.{name}",
                   settings={"weights": directory_fingerprint(scorer / "weights", "megatron"),
                             "candidates": file_digest(self.candidates[split]), "subsets": e.subsets,
                             "bootstrap": e.bootstrap, "n": e.n,
                             "processbench": [file_digest(self.processbench[s]) for s in ("val", "test")] if extra
                             else None},  # fixed order: the two files are written side by side with `parallel`
                   cmd=[self.py, "tools/best_of_n.py", "--candidates", self.candidates[split], "--scorer", scorer,
                        "--out", out, "--aggregation", "min,last,mean,product", "--n-max", e.n,
                        "--subsets", e.subsets, "--bootstrap", e.bootstrap, "--seed", self.seed, "--batch-size", 32,
                        "--no-progress", *extra],
                   output=out, estimate_s=60, produced=lambda: (out / "report.json").exists())
        return out


    # step-checking probes (reported only)
    def probe(self, kind: str, name: str, scorer: Path) -> Path:
        from nemo_erprm.eval.scorers import directory_fingerprint

        out = self.path("probes", f"{kind}_{name}.json")
        self.stage(f"probe_{kind}.{name}",
                   settings={"weights": directory_fingerprint(scorer / "weights", "megatron"),
                             "candidates": file_digest(self.reference), "seed": self.seed},
                   cmd=[self.py, "-m", "nemo_erprm.experiments.probes", kind, "--scorer", scorer, "--candidates",
                        self.reference, "--seed", self.seed, "--out", out],
                   output=out, estimate_s=30, produced=out.exists)
        return out


def val_score(bon_dir: Path, aggregation: str, n: int) -> float:
    curve = json.loads((bon_dir / "report.json").read_text())["best_of_n"][f"prm_{aggregation}"]
    return next(p["accuracy"] for p in curve if p["n"] == n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sweep config, e.g. conf/experiments/arith_cpu.yaml")
    p.add_argument("--out", help="output folder (default: the config's `out`)")
    p.add_argument("--fresh", action="store_true", help="delete previous outputs of this sweep first")
    p.add_argument("overrides", nargs="*", help="key=value for the sweep config, e.g. seeds=[1]")
    args = p.parse_args(argv)
    if executor_of(args.config, args.overrides) == "slurm":
        from nemo_erprm.experiments import slurm_sweep

        return slurm_sweep.main(args.config, args.overrides, args.out, args.fresh)
    try:
        cfg = load_sweep_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = (REPO / (args.out or cfg.out)).resolve()
    if args.fresh and root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    stages = Stages(root, show_estimates=False, log_dir=root / "logs")
    try:
        return run_sweep(cfg, root, stages)
    except (StageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"(finished stages are kept; rerun the same command to resume: {root})", file=sys.stderr)
        return 1


def run_sweep(cfg: SweepConfig, root: Path, stages: Stages) -> int:
    started = time.time()
    sets = cfg.label_sets()
    chosen: GridPoint | None = None
    selection: dict[str, Any] = {}
    results: dict[str, Any] = {"seeds": {}}
    probes: dict[str, dict[str, Any]] = {}
    workers = cfg.parallel
    for i, seed in enumerate(cfg.seeds):
        run = SeedRun(cfg, seed, root, stages)
        run.prepare()
        grid = cfg.grid if chosen is None else [chosen]
        jobs = [(name, eta, point) for point in grid for name, eta in sets.items()]
        trained = run_parallel(lambda job: run.train(*job), jobs, workers)
        ckpts: dict[tuple[str, str], Path] = {(name, point.key): c for (name, _, point), c in zip(jobs, trained)}
        if chosen is None:
            # selection on the validation split of the first seed, never on test
            val_jobs = [(name, point) for point in grid for name in sets]

            def on_val(job: tuple[str, GridPoint]) -> float:
                name, point = job
                bon = run.evaluate("val", f"{name}_{point.key}", ckpts[name, point.key])
                return val_score(bon, cfg.eval.aggregation, cfg.eval.select_n)

            val = run_parallel(on_val, val_jobs, workers)
            table = {}
            for point in grid:
                scores = {name: v for (name, p), v in zip(val_jobs, val) if p.key == point.key}
                table[point.key] = {"per_label_set": scores, "mean": sum(scores.values()) / len(scores)}
            chosen = max(grid, key=lambda g: table[g.key]["mean"])
            best_set = max(sets, key=lambda s: table[chosen.key]["per_label_set"][s])
            selection = {"seed": seed, "split": "val", "n": cfg.eval.select_n, "aggregation": cfg.eval.aggregation,
                         "grid": table, "chosen": asdict(chosen) | {"key": chosen.key}, "best_label_set": best_set}
            print(f"=== selection on seed {seed}'s validation problems: {chosen.key}, best label set {best_set}",
                  flush=True)
        # test: the chosen point's PRMs and the untrained PRM of the chosen init
        scorers = {"untrained": run.init_of(chosen), **{name: ckpts[name, chosen.key] for name in sets}}
        tested = run_parallel(lambda name: run.evaluate("test", name, scorers[name]), list(scorers), workers)
        evals = dict(zip(scorers, tested))
        untrained = evals.pop("untrained")
        if cfg.probes:
            jobs_p = [(kind, name) for kind in cfg.probes for name in scorers]
            done = run_parallel(lambda job: run.probe(job[0], job[1], scorers[job[1]]), jobs_p, workers)
            probes[str(seed)] = {f"{kind}.{name}": path for (kind, name), path in zip(jobs_p, done)}
        results["seeds"][seed] = {"dir": run.dir, "untrained": untrained, "trained": evals,
                                  "checkpoints": {n: ckpts[n, chosen.key] for n in sets}}
    from nemo_erprm.experiments.sweep_report import write_sweep_report

    summary = write_sweep_report(root, cfg, selection, results, stages, total_s=time.time() - started)
    if probes:
        add_probe_section(root, probes)
    print("\n" + summary)
    print(f"report: {root / 'report.md'}")
    return 0


def add_probe_section(root: Path, probes: dict[str, dict[str, Path]]) -> None:
    """The probes' results into ``report.json`` (``seeds.<seed>.probes``) and a table at the end
    of ``report.md``, each read from the probe stage's own output file."""
    report = json.loads((root / "report.json").read_text())
    md = ["## Step-checking probes (test problems; reported only, no choice reads them)", "",
          "Corruption probe (`python -m nemo_erprm.experiments.probes corruption`): in each test problem's "
          "reference solution, one equation's result moved by ±1, ±2 or ±10; P(the PRM scores the step as "
          "written above the corrupted one, after the same prefix), ties ½. Checking the arithmetic gives 1, a "
          "prior over questions and positions 0.5.", ""]
    for seed, files in probes.items():
        figures = {key: json.loads(Path(path).read_text()) for key, path in files.items()}
        report["seeds"].setdefault(seed, {})["probes"] = figures
        md += [f"Seed {seed}:", "", "| probe | PRM | value | pairs |", "|---|---|---|---|"]
        for key, fig in figures.items():
            kind, name = key.split(".", 1)
            md.append(f"| {kind} | {name} | {fig['p_right_above_corrupted']:.3f} | {fig['pairs']} |")
        md.append("")
    (root / "report.json").write_text(json.dumps(report, indent=1, default=str))
    with (root / "report.md").open("a") as f:
        f.write("\n" + "\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
