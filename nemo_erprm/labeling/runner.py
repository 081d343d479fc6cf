"""The labeling job: sharded, resumable, append-only.

Layout of ``output.dir``::

    run.yaml                                  # the config identity; a resume must match it
    records.shard-00000-of-00002.jsonl        # one per shard, append-only, one line per record
    summary.shard-00000-of-00002.json         # written when the shard finishes
    records.jsonl                             # after `merge`: all shards in input order
    records.shard-00000-of-00002.lock         # while a run labels that shard (see below)

One run per shard: a run holds its shard's lock file (:mod:`nemo_erprm.runtime.run_lock`)
from before its first write to its end, so the array tasks of one job (one shard each) run side
by side while a second run of the same shard is refused, naming the holder; a lock left by a
killed run is taken over. Readers keep the first of records with the same id (written twice by
two runs of one shard before the lock existed).

Every problem is written with one append + fsync once all its records exist, so a SIGKILL
loses at most the problem in flight; a restart cuts a partial last line, skips finished
problems and continues. Sampling is seeded per problem, so the records do not depend on
sharding, restarts or order.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from nemo_erprm.errors import ConfigError, RunStateError
from nemo_erprm.jsonl import (JsonlAppender, RecordError, create_file_once, iter_jsonl, repair_partial_tail,
                              write_jsonl_atomic)
from nemo_erprm.labeling.backends import GenerationBackend, build_backend
from nemo_erprm.labeling.config import LabelConfig
from nemo_erprm.labeling.er_label import eta_key
from nemo_erprm.labeling.problems import load_problems
from nemo_erprm.labeling.records import validate_record
from nemo_erprm.labeling.rollouts import label_problems
from nemo_erprm.runtime.run_lock import acquire_run_lock


class _CountingBackend:
    """A backend whose completions move the progress bar: each ``run`` adds what it plans to the
    bar's total, and the backend reports completions as they finish (``on_completions``, per
    batch with ``hf``) or, if it does not, all at the end of the call. A window of problems is
    one call, so a bar counting problems sat at 0 for the whole window."""

    def __init__(self, inner: GenerationBackend, bar: Any):
        self._inner, self._bar = inner, bar
        inner.on_completions = bar.update

    def run(self, requests):
        planned = sum(r.n for r in requests)
        self._bar.total += planned
        self._bar.refresh()
        before = self._bar.n
        out = self._inner.run(requests)
        self._bar.update(planned - (self._bar.n - before))  # what the backend did not report itself
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_path(out_dir: str | Path, shard: int, num_shards: int) -> Path:
    return Path(out_dir) / f"records.{shard_name(shard, num_shards)}.jsonl"


def summary_path(out_dir: str | Path, shard: int, num_shards: int) -> Path:
    """Written last, when the shard has labeled all its problems: its presence marks the shard complete."""
    return Path(out_dir) / f"summary.{shard_name(shard, num_shards)}.json"


def _check_shard_count(out_dir: Path, num_shards: int) -> None:
    """A folder holds the shards of one split: a resubmitted array task with another shard count
    (e.g. inferred from a partial --array) would label problems already in other shards."""
    counts = {int(f.name.rsplit("-of-", 1)[1].split(".")[0]) for f in out_dir.glob("records.shard-*-of-*.jsonl")}
    other = sorted(counts - {num_shards})
    if other:
        raise ConfigError(
            f"--num-shards {num_shards}: {out_dir} holds shards of a {other[0]}-shard split; resubmit with the same "
            f"count (slurm/label_rollouts.sh: ERPRM_NUM_SHARDS={other[0]})"
        )


@dataclass
class RunResult:
    records_path: Path
    problems_total: int
    problems_done_before: int
    problems_labeled: int
    records_written: int
    completions: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def _check_run_identity(out_dir: Path, cfg: LabelConfig) -> None:
    """Write run.yaml on the first run; refuse to mix records of different configs. The array
    tasks of one job start together, so the first writer wins atomically and the others compare."""
    identity = json.loads(json.dumps(cfg.identity()))
    path = out_dir / "run.yaml"
    saved = yaml.safe_load(create_file_once(path, yaml.safe_dump(identity, sort_keys=True, allow_unicode=True)))
    if saved != identity:
        diff = differing_keys(saved if isinstance(saved, dict) else {}, identity)
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff[:4])
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        raise RunStateError(
            f"{path}: the output folder holds records made with another config: {shown}{more}; "
            "choose a new output.dir or delete the folder"
        )


_MISSING = "<unset>"


def differing_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted.key, old value, new value)`` for every leaf that differs."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_keys(a, b, name + ".")
        elif a != b:
            out.append((name, a, b))
    return out


def check_run_inputs(cfg: LabelConfig, check_model: bool = True) -> None:
    """Paths checked before anything is written to ``output.dir`` (a typo must not lock it)."""
    out_dir = Path(cfg.output.dir)
    for p in [out_dir, *out_dir.parents]:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"output.dir={cfg.output.dir}: {p} is a file, not a folder")
            break
    if check_model and cfg.backend.name != "offline":
        from nemo_erprm.embedded import resolve_model_path

        try:
            resolve_model_path(cfg.backend.model)
        except ConfigError as e:
            raise ConfigError(f"backend.model={cfg.backend.model}: {e}") from None
        if cfg.backend.name == "vllm":  # GGUF, and settings vLLM's platform cannot run
            from nemo_erprm.labeling.backends.vllm_backend import check_vllm_backend

            check_vllm_backend(cfg.backend)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The validated records of a file, each id once: a record written twice (two runs of one
    shard before runs took a lock) is kept where it first appears, with a note."""
    records, seen, repeated = [], set(), 0
    for line, record in iter_jsonl(path):
        validate_record(record, str(path), line)
        if record["id"] in seen:
            repeated += 1
            continue
        seen.add(record["id"])
        records.append(record)
    if repeated:
        print(f"note: {path}: {repeated} records repeat an earlier record's id; each id is read once", file=sys.stderr)
    return records


def _finished_problems(path: Path) -> set[str]:
    """Problem ids already written to a shard file (after cutting a partial last line)."""
    repair_partial_tail(path)
    done: set[str] = set()
    if path.exists():
        for line, record in iter_jsonl(path):
            validate_record(record, str(path), line)
            done.add(record["problem_id"])
    return done


def summarize(records: list[dict[str, Any]], etas: list[float]) -> dict[str, Any]:
    """Counts and a 10-bin label histogram per eta."""
    steps = [len(r["steps"]) for r in records]
    hist: dict[str, list[int]] = {}
    for eta in etas:
        key = eta_key(eta)
        bins = Counter(min(int(v * 10), 9) for r in records for v in r["labels"].get(key, []))
        hist[key] = [bins.get(b, 0) for b in range(10)]
    return {
        "records": len(records),
        "problems": len({r["problem_id"] for r in records}),
        "steps": sum(steps),
        "mean_steps": (sum(steps) / len(steps)) if steps else 0.0,
        "outcome_accuracy": (sum(r["outcome"] for r in records) / len(records)) if records else 0.0,
        "truncated_completions": sum(sum(r.get("n_truncated", ())) for r in records),
        "label_histogram": hist,
    }


def run_labeling(
    cfg: LabelConfig,
    shard: int = 0,
    num_shards: int = 1,
    backend: GenerationBackend | None = None,
    progress: bool = True,
    on_problem_done: Callable[[str], None] | None = None,
) -> RunResult:
    """Label every pending problem of this shard and return what was done.

    ``backend`` may be passed in (tests, the demo) to reuse a loaded model. Another run of the
    same shard of ``output.dir`` still running: :class:`RunLockedError`, before anything is written.
    """
    if not 0 <= shard < num_shards:
        raise ConfigError(f"--shard must be in [0, {num_shards}), got {shard}")
    start = time.time()
    problems = load_problems(cfg.input, cfg.segmentation.step_tag)  # validate before generating
    check_run_inputs(cfg, check_model=backend is None)
    out_dir = Path(cfg.output.dir)
    with acquire_run_lock(out_dir, f"records.{shard_name(shard, num_shards)}",
                          f"output.dir={out_dir} (shard {shard} of {num_shards})"):
        return _label_shard(cfg, problems, shard, num_shards, backend, progress, on_problem_done, start)


def _label_shard(cfg: LabelConfig, problems: list, shard: int, num_shards: int, backend: GenerationBackend | None,
                 progress: bool, on_problem_done: Callable[[str], None] | None, start: float) -> RunResult:
    """:func:`run_labeling`'s work, while its shard's lock is held."""
    mine = [(i, p) for i, p in enumerate(problems) if i % num_shards == shard]
    out_dir = Path(cfg.output.dir)
    _check_run_identity(out_dir, cfg)
    _check_shard_count(out_dir, num_shards)
    summary_path(out_dir, shard, num_shards).unlink(missing_ok=True)  # complete again only when done below
    from nemo_erprm.runtime.logs import set_log_file

    set_log_file(out_dir / f"library.{shard_name(shard, num_shards)}.log")  # when the CLI filters logs
    path = shard_path(out_dir, shard, num_shards)
    done = _finished_problems(path)
    pending = [(i, p) for i, p in mine if p.id not in done]

    if pending and backend is None:
        backend = build_backend(cfg.backend, cfg.sampling, cfg.prompt)

    from tqdm.auto import tqdm

    # completions, not problems: a window of problems is generated at once (the total grows as
    # each window is planned); problems done are in the bar's postfix
    bar = tqdm(total=0, desc=f"label shard {shard}/{num_shards}", unit="completion", disable=not progress,
               dynamic_ncols=True)
    bar.set_postfix(problems=f"{len(mine) - len(pending)}/{len(mine)}", refresh=False)
    written = completions = 0
    finished = len(mine) - len(pending)
    if backend is not None and progress:
        backend = _CountingBackend(backend, bar)
    with JsonlAppender(path) as out:
        for index, problem, records, stats in label_problems(pending, cfg, backend):
            for r in records:
                validate_record(r, str(path), 0)
            out.append(records)
            written += len(records)
            completions += stats.completions
            finished += 1
            bar.set_postfix(problems=f"{finished}/{len(mine)}", records=written)
            if on_problem_done:
                on_problem_done(problem.id)
    bar.close()

    summary = summarize(read_records(path), cfg.etas)
    summary.update(shard=shard, num_shards=num_shards, problems_in_shard=len(mine), completions_this_run=completions)
    _write_shard_summary(summary_path(out_dir, shard, num_shards), summary)
    return RunResult(path, len(mine), len(mine) - len(pending), len(pending), written, completions,
                     time.time() - start, summary)


def _write_shard_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)  # atomic: a summary is either absent or whole


def incomplete_shards(out_dir: Path, num_shards: int) -> list[str]:
    """Why each unfinished shard of ``out_dir`` is not complete (empty when all are)."""
    problems = []
    for shard in range(num_shards):
        records, summary = shard_path(out_dir, shard, num_shards), summary_path(out_dir, shard, num_shards)
        if not records.exists():
            problems.append(f"shard {shard}: no records file")
            continue
        try:
            done = json.loads(summary.read_text())
        except (OSError, ValueError):
            problems.append(f"shard {shard}: not finished (no {summary.name})")
            continue
        ids = len({r.get("id") for _, r in iter_jsonl(records)})  # as the summary counts them: each id once
        if done.get("records") != ids:
            problems.append(f"shard {shard}: {ids} records but its summary counts {done.get('records')}")
    return problems


def merge_shards(out_dir: str | Path, output: str | Path | None = None) -> tuple[Path, int]:
    """Merge all shard files of ``out_dir`` into ``records.jsonl`` in input order.

    Refuses when shards of different counts are mixed or any shard is missing or unfinished
    (a shard is finished when its summary, written last, counts the records of its file).
    """
    out_dir = Path(out_dir)
    files = sorted(out_dir.glob("records.shard-*-of-*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no records.shard-*.jsonl files to merge")
    counts = {f.name.rsplit("-of-", 1)[1].split(".")[0] for f in files}
    if len(counts) != 1:
        raise RunStateError(f"{out_dir}: shard files of different shard counts {sorted(counts)}")
    expected = int(counts.pop())
    if len(files) != expected:
        raise RunStateError(f"{out_dir}: {len(files)} of {expected} shard files present")
    unfinished = incomplete_shards(out_dir, expected)
    if unfinished:
        raise RunStateError(
            f"{out_dir}: {len(unfinished)} of {expected} shards are not complete ({'; '.join(unfinished[:4])}); "
            "rerun those array tasks (they resume) and merge again"
        )
    records = []
    for f in files:
        repair_partial_tail(f)
        records += read_records(f)
    ids = Counter(r["id"] for r in records)
    dup = [k for k, v in ids.items() if v > 1]
    if dup:
        raise RecordError(out_dir, 0, f"duplicate record ids across shards, e.g. {dup[:3]}")
    records.sort(key=lambda r: (r["meta"].get("problem_index", 0), int(r["id"].rsplit("/", 1)[1])))
    target = Path(output) if output else out_dir / "records.jsonl"
    n = write_jsonl_atomic(target, records)
    return target, n
