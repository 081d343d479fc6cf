"""The η-sweep on a Slurm cluster: the same pipeline as :mod:`.eta_sweep`, one job per stage.

    python -m nemo_erprm.experiments.slurm_sweep --config conf/experiments/paper_gsm8k_mistral.yaml \\
        policy=/models/MetaMath-Mistral-7B [--dry-run] [key=value ...]
    # or through the sweep's own entry (a config with `executor: slurm`; dry_run=true there):
    python -m nemo_erprm.experiments.eta_sweep --config conf/experiments/paper_gsm8k_mistral.yaml policy=...

Jobs (``sbatch --parsable``; a dependent job waits with ``afterok`` and is cancelled when a job
it waits for fails):

1. label          slurm/label_rollouts.sh as an array, one task per shard: rollouts of the policy on
                  the train problems, labels for every η from the same outcomes
2. merge          tools/label_rollouts.py merge                       (after 1)
3. convert        tools/convert_hf_checkpoint.py: the policy -> the PRMs' common starting checkpoint
                  (skipped when ``init_from`` names one)
4. train.eta<k>   slurm/train_erprm.sh, one per η: same init, data, steps and seed; the final
                  checkpoint exported to HF (the scorer of step 6)                (after 2, 3)
5. generate.<set> tools/best_of_n.py --generate: the policy's candidates, once per test set and
                  shared by every η (skipped for a test set given as a candidates file)
6. score.<set>.eta<k>  tools/best_of_n.py with that PRM on those candidates    (after 4, 5)

Folder (``out``): ``labels/`` (shards, ``records.jsonl``), ``prm_init/``, ``train/eta<k>/<run>/``
(checkpoints, ``hf/``), ``candidates/<set>/``, ``bon/<set>/eta<k>/report.json`` (eta_sweep's
layout, one seed), ``logs/``, ``submitted.json`` (every job: id, sbatch line, dependencies).

The scripts' settings (ERPRM_NUM_SHARDS, the images, ERPRM_CONTAINER_MOUNTS, ERPRM_LOG_ROOT) reach
the jobs as the environment of the sbatch process, with ``--export=ALL``, never as values in
``--export``: sbatch splits that list on commas (env_merge_filter in src/common/env.c, Slurm
22.05 to 26.05), which would cut a comma-separated mount list or a path with a comma. The printed
and recorded line is the same command as a shell line: ``env [-u VAR] VAR=value ... sbatch ...``.

A rerun submits only what is missing: a job whose output is complete is skipped, one still
in the queue from the last submission is kept (and waited on), labeling resubmits only the
unfinished shards (they resume). Everything is checked before the first sbatch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from nemo_erprm.errors import ConfigError
from nemo_erprm.experiments.stages import REPO

STAGES = ("label", "merge", "convert", "train", "generate", "score")


@dataclass
class TestSet:
    name: str = "gsm8k"
    problems: str | None = None     # generate candidates for these problems ...
    format: str = "gsm8k"              # gsm8k | math
    candidates: str | None = None   # ... or score a given candidates file
    limit: int | None = None        # first K problems only


@dataclass
class SlurmEval:
    n: int = 16                        # candidates per problem
    backend: str = "hf"                # generation backend: hf | vllm
    temperature: float = 0.7
    max_new_tokens: int = 512
    aggregation: str = "min,last,mean,product"
    subsets: int = 100
    bootstrap: int = 1000
    batch_size: int = 32
    max_length: int = 4096
    test_sets: list[TestSet] = field(default_factory=list)


@dataclass
class Container:
    """pyxis images (as slurm/*.sh read them). ``image``: every job; ``label_image``: labeling
    and candidate generation (vLLM) instead of ``image``. ``mounts``: comma-separated SRC:DST."""

    image: str | None = None
    label_image: str | None = None
    mounts: str | None = None


@dataclass
class SlurmSweepConfig:
    name: str = "slurm_sweep"
    executor: str = "slurm"
    out: str = "outputs/experiments/slurm_sweep"
    policy: str | None = None       # the policy's HF folder (must exist before anything is submitted)
    init_from: str | None = None    # a converted PRM checkpoint; default: convert the policy (job 3)
    convert_args: list[str] = field(default_factory=lambda: ["--head", "lm_tokens"])
    seed: int = 1234
    shards: int = 32
    label_config: str = "conf/label_gsm8k_mistral.yaml"
    label_overrides: list[str] = field(default_factory=list)
    etas: list[float] = field(default_factory=lambda: [0.1, 1.0, 2.0, 5.0, 8.0, 10.0, 15.0])
    train_config: str = "conf/erprm_mistral_7b.yaml"
    train_overrides: list[str] = field(default_factory=list)
    eval: SlurmEval = field(default_factory=SlurmEval)
    # extra sbatch flags per stage (label, merge, convert, train, generate, score), after the
    # scripts' own #SBATCH lines, which they override
    resources: dict[str, list[str]] = field(default_factory=dict)
    container: Container = field(default_factory=Container)
    dry_run: bool = False              # print the sbatch lines, submit nothing

    def validate(self) -> SlurmSweepConfig:
        if self.executor != "slurm":
            raise ConfigError(f"executor={self.executor!r}: this config is submitted to Slurm (executor: slurm)")
        if not self.policy:
            raise ConfigError("policy: not set; give the policy's HF folder, e.g. policy=/models/MetaMath-Mistral-7B")
        if not Path(self.policy).is_dir():
            raise ConfigError(f"policy={self.policy}: no such folder (the policy's HF folder)")
        if not (Path(self.policy) / "config.json").is_file():
            raise ConfigError(f"policy={self.policy}: no config.json there (not an HF model folder)")
        if self.init_from and not (Path(self.init_from) / "prm_config.json").is_file():
            raise ConfigError(f"init_from={self.init_from}: not a converted PRM checkpoint (no prm_config.json)")
        if self.shards < 1:
            raise ConfigError(f"shards={self.shards} must be >= 1")
        if not self.etas:
            raise ConfigError("etas: give at least one η")
        keys = [eta_name(e) for e in self.etas]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"etas: repeated η in {self.etas}")
        if any(math.isnan(e) or e < 0 for e in self.etas):
            raise ConfigError(f"etas: every η must be >= 0 (.inf: hard labels), got {self.etas}")
        for key in ("label_config", "train_config"):
            if not (REPO / getattr(self, key)).is_file():
                raise ConfigError(f"{key}={getattr(self, key)}: no such file")
        if any(o.replace(" ", "").lower() in ("export.hf=false", "export.hf=0") for o in self.train_overrides):
            raise ConfigError("train_overrides: export.hf=false: the scoring jobs read each run's HF export (run/hf)")
        unknown = sorted(set(self.resources) - set(STAGES))
        if unknown:
            raise ConfigError(f"resources: unknown stage(s) {unknown}; stages are {list(STAGES)}")
        e = self.eval
        if e.n < 1:
            raise ConfigError(f"eval.n={e.n} must be >= 1")
        if e.backend not in ("hf", "vllm"):
            raise ConfigError(f"eval.backend={e.backend!r} must be hf or vllm")
        if not e.test_sets:
            raise ConfigError("eval.test_sets: give at least one test set")
        names = [t.name for t in e.test_sets]
        if len(set(names)) != len(names):
            raise ConfigError(f"eval.test_sets: repeated name in {names}")
        for i, t in enumerate(e.test_sets):
            where = f"eval.test_sets[{i}] ({t.name})"
            if bool(t.problems) == bool(t.candidates):
                raise ConfigError(f"{where}: give either problems (generated here) or candidates (a file)")
            path = t.problems or t.candidates
            if not (REPO / path).is_file():
                raise ConfigError(f"{where}: {'problems' if t.problems else 'candidates'}={path}: no such file")
            if t.format not in ("gsm8k", "math"):
                raise ConfigError(f"{where}.format={t.format!r} must be gsm8k or math")
        return self


def eta_name(eta: float) -> str:
    """``eta2``, ``eta0.1``, ``etainf``: the η's label key, as eta_sweep names its label sets."""
    from nemo_erprm.labeling.er_label import eta_key

    return f"eta{eta_key(eta)}"


def _eta_arg(eta: float) -> str:
    return ".inf" if eta == math.inf else repr(float(eta))


def index_ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2,5,7-8`` (an sbatch --array value)."""
    parts, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            parts.append(str(x) if x == start else f"{start}-{x}")
            start = None
    return ",".join(parts)


def load_config(path: str, overrides: list[str]) -> SlurmSweepConfig:
    from nemo_erprm.yaml_config import load_structured

    return load_structured(SlurmSweepConfig, path, overrides).validate()


def project_python() -> str:
    """The interpreter slurm/*.sh pick outside a container: ERPRM_PYTHON, .venv/bin/python, python."""
    if os.environ.get("ERPRM_PYTHON"):
        return os.environ["ERPRM_PYTHON"]
    return ".venv/bin/python" if os.access(REPO / ".venv/bin/python", os.X_OK) else "python"


def script_env(**env: str | None) -> dict[str, str | None]:
    """What a slurm/*.sh job reads from its environment: set as given, and a setting the config
    leaves empty unset (None), so that one exported in the submitting shell does not reach the
    job in the config's place."""
    return {k: (str(v) if v else None) for k, v in env.items()}


@dataclass
class Job:
    name: str
    sbatch: list[str]                  # everything after `sbatch --parsable [--dependency ...]`
    after: list[str]                   # names of the jobs it waits for
    done: Callable[[], bool]           # its output is complete
    output: Path                       # what done() looks at (for the messages)
    env: dict[str, str | None] = field(default_factory=dict)  # for sbatch; None: unset there


class Plan:
    """The sweep's jobs in submission order, with absolute paths."""

    def __init__(self, cfg: SlurmSweepConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.py = project_python()
        self.jobs: list[Job] = []
        self.logs = out / "logs"

    def flags(self, stage: str, name: str, *own: str) -> list[str]:
        """The job's name, log and ``own`` flags, then the config's ``resources`` (which win)."""
        return [f"--job-name={self.cfg.name}.{name}", f"--output={self.logs}/{name}-%j.out", *own,
                *self.cfg.resources.get(stage, [])]

    def wrap(self, stage: str, name: str, args: list[str], image: str | None) -> list[str]:
        """A job of one tool command (no script of its own): the project's python, or the
        image's python3 through pyxis when an image is set."""
        run = [self.py, *args]
        if image:
            mounts = f"{REPO}:{REPO}" + (f",{self.cfg.container.mounts}" if self.cfg.container.mounts else "")
            run = ["srun", f"--container-image={image}", f"--container-mounts={mounts}",
                   f"--container-workdir={REPO}", "python3", *args]
        body = f"cd {shlex.quote(str(REPO))} && exec " + " ".join(shlex.quote(str(a)) for a in run)
        return [*self.flags(stage, name), f"--wrap={body}"]

    def build(self) -> Plan:
        cfg, out, c = self.cfg, self.out, self.cfg.container
        policy = str(Path(cfg.policy).resolve())
        labels = out / "labels"
        records = labels / "records.jsonl"

        missing = self.missing_shards(labels)
        array = index_ranges(missing)
        label_args = [f"backend.model={policy}", f"output.dir={labels}", f"seed={cfg.seed}",
                      f"etas=[{','.join(_eta_arg(e) for e in cfg.etas)}]", *cfg.label_overrides]
        self.add(Job("label", [f"--array={array}", f"--output={self.logs}/label-%A_%a.out",
                               f"--job-name={cfg.name}.label", "--export=ALL", *cfg.resources.get("label", []),
                               "slurm/label_rollouts.sh", cfg.label_config, *label_args],
                     [], lambda: records.is_file() or not missing, labels,
                     # the shard count, also when only some tasks are resubmitted; the script
                     # takes ERPRM_LABEL_IMAGE, else ERPRM_CONTAINER_IMAGE
                     script_env(ERPRM_NUM_SHARDS=str(cfg.shards), ERPRM_LABEL_IMAGE=c.label_image,
                                ERPRM_CONTAINER_IMAGE=c.image, ERPRM_CONTAINER_MOUNTS=c.mounts)))
        self.add(Job("merge", self.wrap("merge", "merge", ["tools/label_rollouts.py", "merge", "--dir", labels], c.image),
                     ["label"], records.is_file, records))

        if cfg.init_from:
            init = Path(cfg.init_from).resolve()
        else:
            init = out / "prm_init"
            self.add(Job("convert", self.wrap("convert", "convert", ["tools/convert_hf_checkpoint.py", "--hf-dir", policy,
                                                                      "--out", init, *cfg.convert_args], c.image),
                         [], lambda: (init / "prm_config.json").is_file(), init))

        scorers: dict[str, Path] = {}
        for eta in cfg.etas:
            key = eta_name(eta)
            run_dir = out / "train" / key / f"{cfg.name}_{key}"
            scorers[key] = run_dir / "hf"
            args = [f"model.init_from={init}", f"data.train={records}", f"data.eta={_eta_arg(eta)}",
                    f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}", f"run.seed={cfg.seed}",
                    "export.hf=true", *cfg.train_overrides]
            self.add(Job(f"train.{key}", [*self.flags("train", f"train.{key}", "--export=ALL"),
                                          "slurm/train_erprm.sh", cfg.train_config, *args],
                         ["merge"] + ([] if cfg.init_from else ["convert"]),
                         lambda h=scorers[key]: (h / "prm_config.json").is_file(), scorers[key],
                         script_env(ERPRM_LOG_ROOT=str(self.logs), ERPRM_CONTAINER_IMAGE=c.image,
                                    ERPRM_CONTAINER_MOUNTS=c.mounts)))

        e = cfg.eval
        for t in e.test_sets:
            limit = ["--limit", t.limit] if t.limit else []
            if t.candidates:
                candidates, gen = (REPO / t.candidates).resolve(), []
            else:
                gen_out = out / "candidates" / t.name
                candidates, gen = gen_out / "candidates.jsonl", [f"generate.{t.name}"]
                self.add(Job(gen[0], self.wrap("generate", gen[0], [
                    "tools/best_of_n.py", "--generate", e.n, "--policy", policy, "--backend", e.backend,
                    "--problems", (REPO / t.problems).resolve(), "--problems-format", t.format, *limit,
                    "--prompt-config", (REPO / cfg.label_config).resolve(),
                    "--temperature", e.temperature, "--max-new-tokens", e.max_new_tokens, "--seed", cfg.seed,
                    "--scorer", "none", "--out", gen_out, "--bootstrap", 0, "--no-progress"], c.label_image or c.image),
                    [], lambda g=gen_out: (g / "report.json").is_file(), gen_out))
            for eta in cfg.etas:
                key = eta_name(eta)
                bon = out / "bon" / t.name / key
                name = f"score.{t.name}.{key}"
                self.add(Job(name, self.wrap("score", name, [
                    "tools/best_of_n.py", "--candidates", candidates, "--scorer", scorers[key], "--out", bon,
                    "--aggregation", e.aggregation, "--n-max", e.n, *limit, "--subsets", e.subsets,
                    "--bootstrap", e.bootstrap, "--batch-size", e.batch_size, "--max-length", e.max_length,
                    "--seed", cfg.seed, "--no-progress"], c.image),
                    [f"train.{key}", *gen], lambda b=bon: (b / "report.json").is_file(), bon))
        return self

    def add(self, job: Job) -> None:
        job.sbatch = [str(a) for a in job.sbatch]
        self.jobs.append(job)

    def missing_shards(self, labels: Path) -> list[int]:
        from nemo_erprm.labeling.runner import summary_path

        if (labels / "records.jsonl").is_file():
            return []
        # a finished shard has its summary (written last); merge checks the record counts
        return [s for s in range(self.cfg.shards) if not summary_path(labels, s, self.cfg.shards).is_file()]


def sbatch_env(settings: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """The sbatch process's environment (this one with ``settings`` applied, None: removed) and
    the same as ``env`` words for the printed line (``-u`` only for what is set here)."""
    unset = [k for k, v in settings.items() if v is None and k in os.environ]
    given = {k: v for k, v in settings.items() if v is not None}
    env = {k: v for k, v in os.environ.items() if k not in unset} | given
    words = [w for k in unset for w in ("-u", k)] + [f"{k}={v}" for k, v in given.items()]
    return env, (["env", *words] if words else [])


def in_queue(job_id: str) -> bool:
    """Pending or running (squeue lists a job until it has ended)."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def submit_all(plan: Plan, previous: dict, dry_run: bool, records: dict[str, dict]) -> None:
    """Submit what is missing, filling ``records`` (``submitted.json``'s jobs: name -> record)
    as it goes, so that a refused sbatch keeps the ids of the jobs submitted before it."""
    ids: dict[str, str] = {}           # jobs still to finish: name -> id (or $name in a dry run)
    for job in plan.jobs:
        old = previous.get(job.name, {})
        if job.done():
            print(f"skip   {job.name}: done ({job.output})")
            records[job.name] = {**old, "output": str(job.output), "status": "done"}
            continue
        if old.get("id") and not dry_run and in_queue(old["id"]):
            print(f"keep   {job.name}: job {old['id']} still in the queue")
            ids[job.name] = old["id"]
            records[job.name] = {**old, "status": "in queue"}
            continue
        waits = [ids[a] for a in job.after if a in ids]
        dep = [f"--dependency=afterok:{':'.join(waits)}", "--kill-on-invalid-dep=yes"] if waits else []
        cmd = ["sbatch", "--parsable", *dep, *job.sbatch]
        env, env_words = sbatch_env(job.env)
        line = shlex.join([*env_words, *cmd])
        if dry_run:
            ids[job.name] = f"<{job.name}>"  # the id sbatch would print
            print(f"{job.name}: {line}")
            continue
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SubmitError(f"sbatch for {job.name} failed (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()}\n  {line}")
        job_id = proc.stdout.strip().split(";")[0]
        ids[job.name] = job_id
        records[job.name] = {"id": job_id, "command": line, "after": {a: ids[a] for a in job.after if a in ids},
                             "output": str(job.output), "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "status": "submitted"}
        print(f"submitted {job.name}: job {job_id}" + (f" after {','.join(waits)}" if waits else ""))


class SubmitError(RuntimeError):
    """sbatch refused a job (the jobs submitted before it are recorded)."""


def main(config_path: str, overrides: list[str], out: str | None = None, fresh: bool = False,
         dry_run: bool = False) -> int:
    """Check the config, then submit the sweep's missing jobs (or print them: ``dry_run``)."""
    try:
        cfg = load_config(config_path, list(overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dry_run = dry_run or cfg.dry_run
    root = (REPO / (out or cfg.out)).resolve()
    if not dry_run and shutil.which("sbatch") is None:
        print("error: sbatch not found: this config submits to Slurm (executor: slurm); use --dry-run to see the jobs",
              file=sys.stderr)
        return 2
    if fresh and root.exists() and not dry_run:
        shutil.rmtree(root)
    plan = Plan(cfg, root).build()
    state_file = root / "submitted.json"
    previous = json.loads(state_file.read_text())["jobs"] if state_file.is_file() else {}
    if not dry_run:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        (root / "sweep_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    records: dict[str, dict] = {}
    try:
        submit_all(plan, previous, dry_run, records)
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not dry_run:
            state_file.write_text(json.dumps({"config": config_path, "overrides": list(overrides),
                                              "jobs": {**previous, **records}}, indent=2))
    if not dry_run:
        new = sum(r.get("status") == "submitted" for r in records.values())
        print(f"{new} job(s) submitted, {len(plan.jobs) - new} skipped (done) or kept (in the queue); {state_file}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="e.g. conf/experiments/paper_gsm8k_mistral.yaml")
    p.add_argument("--out", help="output folder (default: the config's `out`)")
    p.add_argument("--fresh", action="store_true", help="delete previous outputs of this sweep first")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch lines; submit nothing")
    p.add_argument("overrides", nargs="*", help="key=value for the sweep config, e.g. policy=/models/X")
    args = p.parse_args(argv)
    return main(args.config, args.overrides, args.out, args.fresh, args.dry_run)


if __name__ == "__main__":
    sys.exit(cli())
