"""``python tools/best_of_n.py``: Best-of-N (and ProcessBench-style step) evaluation of a PRM.

    # no model: random, oracle and majority vote from the file's candidates (graded by us)
    python tools/best_of_n.py --candidates ../shared/data/bon/gsm8k_test_4_model_solutions.jsonl --scorer none --out outputs/bon/none
    # a PRM checkpoint (megatron, any training layout) or its HF export
    python tools/best_of_n.py --candidates FILE --scorer outputs/train/NAME/checkpoints/step=...-last --out DIR
    # sample the candidates first with a labeling backend (hf on CPU/GPU, vllm on GPU)
    python tools/best_of_n.py --generate 8 --policy smollm2 --problems ../shared/data/gsm8k/test.jsonl --limit 20 --scorer DIR --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from nemo_erprm.errors import ArgumentParser, ConfigError, run_reporting_errors

DEFAULT_AGGREGATIONS = ("min", "last", "mean", "product", "geomean")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="best_of_n.py", description="Best-of-N evaluation of an ER-PRM.")
    src = p.add_argument_group("candidates")
    src.add_argument("--candidates", help="candidate file (layouts: bon4, rlhflow, ours; see nemo_erprm.eval.candidates)")
    src.add_argument("--layout", default="auto", choices=["auto", "bon4", "rlhflow", "ours"])
    src.add_argument("--generate", type=int, metavar="N", help="sample N candidates per problem instead")
    src.add_argument("--policy", default="smollm2", help="with --generate: HF dir, .gguf or 'smollm2'")
    src.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="with --generate")
    src.add_argument("--problems", help="with --generate: problems file (GSM8K or MATH layout)")
    src.add_argument("--problems-format", default="gsm8k", choices=["gsm8k", "math"])
    src.add_argument("--prompt-config", metavar="LABEL_YAML",
                     help="with --generate: prompt the policy as this labeling config's `prompt` section does "
                          "(default: the labeling default, the policy's chat template when it has one)")
    src.add_argument("--max-new-tokens", type=int, default=320)
    src.add_argument("--generate-batch", type=int, default=1, metavar="K",
                     help="with --generate: sample K problems' candidates together (same candidates: seeds are per "
                          "completion; K > 1 fills a GPU)")
    src.add_argument("--temperature", type=float, default=0.7)
    src.add_argument("--limit", type=int, help="first K problems only")
    src.add_argument("--keep-calculator-annotations", action="store_true",
                     help="keep GSM8K '<<a*b=c>>' annotations in candidates (removed by default, as in training)")
    src.add_argument("--segmentation-rule", default="newline", choices=["newline", "blank_line", "sentence"])
    p.add_argument("--scorer", required=True, help="'none', a PRM checkpoint (weights/ + context/), an HF export, "
                   "or vllm:<HF export> (scored on vLLM's step pooler; needs vLLM)")
    p.add_argument("--out", required=True, help="output folder (report.json, report.md, best_of_n.png, "
                   "candidates_scored.jsonl, scores_cache.jsonl; candidates.jsonl with --generate)")
    p.add_argument("--aggregation", default=",".join(DEFAULT_AGGREGATIONS),
                   help=f"comma-separated, from {DEFAULT_AGGREGATIONS}")
    p.add_argument("--n-max", type=int, help="largest N (default: the largest N at least half of the problems have; "
                   "each N averages over the problems with at least N candidates)")
    p.add_argument("--subsets", type=int, default=200, help="random subsets per problem and N (all if fewer exist)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% interval")
    p.add_argument("--batch-size", type=int, default=8,
                   help="candidates per forward (grouped by length to keep padding small)")
    p.add_argument("--max-length", type=int, default=4096, help="tokens per scored solution")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="scorer dtype (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processbench", help="also evaluate steps on a ProcessBench-format file")
    p.add_argument("--processbench-threshold-split", help="ProcessBench-format file to choose the threshold on")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs on the console")
    return p


def generate_candidates(args: argparse.Namespace, out_dir: Path) -> Path:
    """Sample candidates with a labeling backend into ``OUT/candidates.jsonl`` (an 'ours' candidate
    file), one line per problem, appended and fsync'd as each problem finishes. A rerun with the
    same settings (``OUT/candidates.settings.json``) keeps those lines and samples the others;
    problem i is seeded with ``--seed + i`` whatever ran before, so the file equals an
    uninterrupted run's."""
    from dataclasses import asdict

    from nemo_erprm.eval.report import file_sha256
    from nemo_erprm.jsonl import JsonlAppender
    from nemo_erprm.labeling.backends import BackendConfig, PromptConfig, SamplingConfig, build_backend
    from nemo_erprm.labeling.problems import InputConfig, load_problems

    if not args.problems:
        raise ConfigError("--generate needs --problems FILE")
    problems = load_problems(InputConfig(path=args.problems, format=args.problems_format, limit=args.limit), "ки")
    sampling = SamplingConfig(n=args.generate, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    prompt = PromptConfig()
    if args.prompt_config:
        from nemo_erprm.labeling.config import load_label_config

        prompt = load_label_config(args.prompt_config).prompt
    policy = Path(args.policy)
    settings = {  # what the candidates depend on (not --limit: problem i's candidates do not depend on it)
        "policy": str(policy.resolve()) if policy.exists() else args.policy, "backend": args.backend,
        "problems_sha256": file_sha256(Path(args.problems)), "problems_format": args.problems_format,
        "n": args.generate, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
        "seed": args.seed, "prompt": asdict(prompt),
    }
    path = out_dir / "candidates.jsonl"
    done = _generated_before(path, out_dir / "candidates.settings.json", settings)
    pending = [(i, p) for i, p in enumerate(problems) if p.id not in done]
    if done:
        print(f"{len(problems) - len(pending)} of {len(problems)} problems' candidates found in {path}; "
              f"sampling the other {len(pending)}", file=sys.stderr)
    if not pending:
        return path
    from nemo_erprm.labeling.backends.plan import Request, windows

    backend = build_backend(BackendConfig(name=args.backend, model=args.policy,
                                          batch_size=max(32, args.generate * args.generate_batch)), sampling, prompt)

    def sample(window: list) -> list[list[str]]:
        # problem i's completions take seeds --seed + i + j, whatever else is sampled with it
        if len(window) == 1:
            i, prob = window[0]
            return backend.generate([backend.format_prompt(prob.question)], args.generate, seed=args.seed + i)
        requests = [Request(tuple(backend.encode(backend.format_prompt(prob.question))), args.generate, args.seed + i)
                    for i, prob in window]
        return [[c.text for c in completions] for completions in backend.run(requests)]

    try:
        with JsonlAppender(path) as out:
            k = len(problems) - len(pending)
            for window in windows(pending, args.generate_batch):
                for (i, prob), texts in zip(window, sample(window)):
                    out.append([{"id": prob.id, "question": prob.question, "gold": prob.gold, "candidates": texts}])
                k += len(window)
                if not args.no_progress:
                    print(f"generated {k}/{len(problems)}", file=sys.stderr)
    finally:
        backend.close()
    return path


def _generated_before(path: Path, settings_path: Path, settings: dict) -> set[str]:
    """Ids of the problems ``path`` already holds, after checking that they were generated with
    ``settings`` (recorded beside it by the first run) and cutting a partial last line."""
    import json

    from nemo_erprm.errors import RunStateError
    from nemo_erprm.jsonl import create_file_once, iter_jsonl, repair_partial_tail
    from nemo_erprm.labeling.runner import differing_keys

    if path.exists() and not settings_path.exists():
        raise RunStateError(f"{path}: candidates without {settings_path.name} (their generation settings); "
                            f"delete it to generate again, or choose another --out")
    wanted = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    saved = json.loads(create_file_once(settings_path, json.dumps(wanted, indent=2, sort_keys=True) + "\n"))
    if saved != wanted:
        diff = differing_keys(saved, wanted)
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff[:4])
        raise RunStateError(f"{settings_path}: --out holds candidates generated with other settings ({shown}); "
                            f"choose another --out, or delete {path.name} and {settings_path.name} there")
    repair_partial_tail(path)
    done: set[str] = set()
    if path.exists():
        for _, record in iter_jsonl(path):
            done.add(str(record.get("id")))
    return done


def score_all(scorer, items, cache_path: Path, batch_size: int, progress: bool, label: str):
    from tqdm import tqdm

    from nemo_erprm.eval.cache import ScoreCache

    cache = ScoreCache(cache_path)
    bar = tqdm(total=len(items), desc=label, unit="cand", disable=not progress)
    try:
        return cache.score(scorer.fingerprint, items, scorer.score_batch, batch_size, progress=bar.update)
    finally:
        bar.close()
        cache.close()


def run(args: argparse.Namespace) -> dict:
    aggregations = [a.strip() for a in args.aggregation.split(",") if a.strip()]
    unknown = sorted(set(aggregations) - set(DEFAULT_AGGREGATIONS))
    if unknown or not aggregations:
        raise ConfigError(f"--aggregation: unknown {unknown}; choose from {DEFAULT_AGGREGATIONS}")
    if bool(args.candidates) == bool(args.generate):
        raise ConfigError("give either --candidates FILE or --generate N (with --problems)")
    check_args(args)
    from nemo_erprm.runtime.logs import quiet_third_party

    quiet_third_party("best_of_n", args.verbose)  # library warnings to OUT/library.log
    from nemo_erprm.runtime.run_lock import acquire_run_lock

    out_dir = Path(args.out)
    created = not out_dir.exists()
    try:
        with acquire_run_lock(out_dir, "run", f"--out {out_dir}"):  # one run per --out folder
            return _run_into(args, aggregations, out_dir)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty --out folder behind
        raise


def check_args(args: argparse.Namespace) -> None:
    """Argument and path checks that need no model and no data."""
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--n-max", args.n_max, 1),
                               ("--subsets", args.subsets, 1), ("--bootstrap", args.bootstrap, 0),
                               ("--max-length", args.max_length, 2), ("--generate", args.generate, 1),
                               ("--generate-batch", args.generate_batch, 1),
                               ("--limit", args.limit, 1)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    out = Path(args.out)
    for p in [out, *out.resolve().parents]:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--out {args.out}: {p} is a file, not a folder")
            break
    if args.prompt_config and not Path(args.prompt_config).is_file():
        raise ConfigError(f"--prompt-config {args.prompt_config}: no such file")
    if args.candidates and not Path(args.candidates).is_file():
        raise ConfigError(f"--candidates {args.candidates}: no such file")
    from nemo_erprm.eval.scorers import scorer_path

    if args.scorer != "none" and not scorer_path(args.scorer).is_dir():
        raise ConfigError(f"--scorer {args.scorer}: no such folder (or 'none')")


def _make_out(out_dir: Path) -> None:
    from nemo_erprm.runtime.logs import set_log_file

    out_dir.mkdir(parents=True, exist_ok=True)
    set_log_file(out_dir / "library.log")


def check_lengths(scorer, problems, candidates_path: Path, max_length: int) -> None:
    """Every candidate must fit in --max-length with all its steps: checked before scoring
    starts, naming the line and the candidate."""
    from nemo_erprm.labeling.segmentation import render_prm_input

    step_tokenizer = scorer.step_tokenizer
    for p in problems:
        for c in p.candidates:
            ex = step_tokenizer(render_prm_input(p.question, c.steps, scorer.step_tag), [0.0] * len(c.steps))
            if ex is None or len(ex.tag_positions) != len(c.steps):
                raise ConfigError(f"{candidates_path}:{p.line}: candidate {c.source!r} ({len(c.steps)} steps) does not "
                                  f"fit in --max-length {max_length} tokens; raise --max-length or drop it")


def _run_into(args: argparse.Namespace, aggregations: list, out_dir: Path) -> dict:
    from nemo_erprm.eval.best_of_n import best_of_n_curves, coverage_notes
    from nemo_erprm.eval.candidates import load_candidates
    from nemo_erprm.eval.report import curves_json, file_sha256, write_report
    from nemo_erprm.eval.scorers import describe_scorer, load_scorer
    from nemo_erprm.labeling.segmentation import SegmentationConfig

    started = time.time()
    if args.candidates:
        candidates_path = Path(args.candidates)
    else:
        _make_out(out_dir)
        candidates_path = generate_candidates(args, out_dir)

    scorer = load_scorer(args.scorer, args.max_length, args.dtype, args.batch_size)
    step_tag = scorer.step_tag if scorer is not None else "ки"
    seg = SegmentationConfig(rule=args.segmentation_rule, step_tag=step_tag)
    problems, load_report = load_candidates(candidates_path, args.layout, seg,
                                            strip_calculator=not args.keep_calculator_annotations, limit=args.limit)
    unknown_truth = [p.line for p in problems if any(c.correct is None for c in p.candidates)]
    if unknown_truth:
        raise ConfigError(f"{candidates_path}: line {unknown_truth[0]} (and {len(unknown_truth) - 1} more): no gold "
                          f"answer and no labels, so correctness is unknown")
    if scorer is not None:
        check_lengths(scorer, problems, candidates_path, args.max_length)
    print(f"{load_report.problems} problems, {load_report.candidates} candidates ({load_report.layout}); "
          f"{load_report.label_disagreements} disagreements between our grader and the file's labels", file=sys.stderr)

    step_scores = None
    if scorer is not None:
        _make_out(out_dir)
        items = [(p.question, c.steps) for p in problems for c in p.candidates]
        flat = score_all(scorer, items, out_dir / "scores_cache.jsonl", args.batch_size, not args.no_progress, "scoring")
        step_scores, at = [], 0
        for p in problems:
            step_scores.append(flat[at: at + len(p.candidates)])
            at += len(p.candidates)
    curves = best_of_n_curves(problems, step_scores, aggregations, args.n_max, args.subsets, args.bootstrap, args.seed)
    for note in coverage_notes(problems, curves, args.n_max):
        print(f"note: {note}", file=sys.stderr)
    _make_out(out_dir)
    write_candidate_scores(out_dir / "candidates_scored.jsonl", problems, step_scores, aggregations)

    report = {
        "data": {"path": str(candidates_path), "sha256": file_sha256(candidates_path), **vars(load_report)},
        "scorer": None if scorer is None else {**describe_scorer(args.scorer), "fingerprint": scorer.fingerprint},
        "config": {k: v for k, v in vars(args).items()},
        "best_of_n": curves_json(curves),
    }
    if args.processbench:
        report["processbench"] = processbench(args, scorer, out_dir)
    report["seconds"] = round(time.time() - started, 1)
    paths = write_report(out_dir, report, curves)
    print_summary(curves)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return report


def write_candidate_scores(path: Path, problems, step_scores, aggregations) -> None:
    """Per problem and candidate: answer, correctness and (with a PRM) step and aggregated scores."""
    from nemo_erprm.eval.aggregate import aggregate
    from nemo_erprm.jsonl import write_jsonl_atomic

    rows = []
    for j, p in enumerate(problems):
        cands = []
        for c_idx, c in enumerate(p.candidates):
            row = {"source": c.source, "answer": c.answer, "correct": c.correct, "num_steps": len(c.steps)}
            if step_scores is not None:
                s = step_scores[j][c_idx]
                row["step_scores"] = s
                row["aggregated"] = {a: aggregate(s, a) for a in aggregations}
            cands.append(row)
        rows.append({"id": p.id, "line": p.line, "gold": p.gold, "candidates": cands})
    write_jsonl_atomic(path, rows)


def processbench(args: argparse.Namespace, scorer, out_dir: Path) -> dict:
    from nemo_erprm.eval.processbench import evaluate_steps, load_processbench

    if scorer is None:
        raise ConfigError("--processbench needs a PRM (--scorer), not 'none'")
    samples = load_processbench(args.processbench)
    scores = score_all(scorer, [(s.problem, s.steps) for s in samples], out_dir / "scores_cache.jsonl",
                       args.batch_size, not args.no_progress, "step eval")
    split_samples = split_scores = None
    if args.processbench_threshold_split:
        split_samples = load_processbench(args.processbench_threshold_split)
        split_scores = score_all(scorer, [(s.problem, s.steps) for s in split_samples],
                                 out_dir / "scores_cache.jsonl", args.batch_size, not args.no_progress, "threshold split")
    result = evaluate_steps(samples, scores, split_samples, split_scores)
    result["path"] = args.processbench
    return result


def print_summary(curves) -> None:
    ns = [p.n for p in next(iter(curves.values()))]
    print("method".ljust(18) + "".join(f"N={n}".rjust(9) for n in ns))
    print("problems".ljust(18) + "".join(f"{p.problems:9d}" for p in next(iter(curves.values()))))
    for m, pts in curves.items():
        print(m.ljust(18) + "".join(f"{p.accuracy:9.3f}" for p in pts))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_progress:
        from nemo_erprm.runtime.logs import hide_progress_bars

        hide_progress_bars()  # before anything imports tqdm
    return run_reporting_errors(run, args)


if __name__ == "__main__":
    sys.exit(main())
