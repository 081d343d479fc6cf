"""Command line of the labeling stage (``tools/label_rollouts.py``).

    label_rollouts.py [run] --config conf/label_gsm8k.yaml [--shard i --num-shards n] [key=value ...]
    label_rollouts.py merge --dir OUT_DIR [--out FILE]
    label_rollouts.py relabel --input records.jsonl --eta 10 [--eta 5 ...] --out FILE
    label_rollouts.py export --input records.jsonl --format text_value|trl --eta 2 --out FILE
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from nemo_erprm.errors import ArgumentParser, ConfigError, run_reporting_errors
from nemo_erprm.jsonl import write_jsonl_atomic

SUBCOMMANDS = ("run", "merge", "relabel", "export")


def _parse_eta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value:  # nan: no ER label is defined for it
        raise argparse.ArgumentTypeError(f"--eta must be a number, inf or -inf, got {text!r}")
    return value


def _parse_threshold(text: str) -> float:
    from nemo_erprm.labeling.formats import check_threshold

    try:
        return check_threshold(float(text), "--threshold")
    except ValueError as e:  # not a number, or a ConfigError: out of range
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, ConfigError) else
                                         f"--threshold must be a number, got {text!r}") from None


def _check_out_file(path: str, overwrite: bool | None = None) -> None:
    """--out must be able to become a file; checked before anything is read or written. With
    ``overwrite`` False an existing file is refused (None: replacing it is the tool's job)."""
    from pathlib import Path

    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"--out {path}: is a folder; give a file name")
    if overwrite is False and out.exists():
        raise ConfigError(f"--out {path}: exists; pass --overwrite to replace it (written whole, then renamed)")
    for parent in out.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {path}: {parent} is a file, not a folder")
            break


def _read_records(path: str) -> list[dict]:
    """Validated records, each id once (see :func:`nemo_erprm.labeling.runner.read_records`)."""
    from nemo_erprm.labeling.runner import read_records

    return read_records(path)


def cmd_run(argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="label_rollouts.py run", description="Label rollouts with ER labels.")
    p.add_argument("--config", help="YAML config (conf/label_*.yaml); schema defaults otherwise")
    p.add_argument("--shard", type=int, default=int(os.environ.get("ERPRM_SHARD", 0)))
    p.add_argument("--num-shards", type=int, default=int(os.environ.get("ERPRM_NUM_SHARDS", 1)))
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs on the console")
    p.add_argument("overrides", nargs="*", help="OmegaConf overrides, e.g. sampling.n=16 input.limit=100")
    args = p.parse_intermixed_args(argv)  # overrides before and after options
    if args.no_progress:
        from nemo_erprm.runtime.logs import hide_progress_bars

        hide_progress_bars()  # before anything imports tqdm
    from nemo_erprm.labeling.config import dump_config, load_label_config
    from nemo_erprm.labeling.runner import run_labeling

    cfg = load_label_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg))
        return 0
    from nemo_erprm.runtime.logs import quiet_third_party

    quiet_third_party("label", args.verbose)  # the runner names the log file in output.dir
    result = run_labeling(cfg, args.shard, args.num_shards, progress=not args.no_progress)
    s = result.summary
    print(
        f"shard {args.shard}/{args.num_shards}: {result.problems_labeled} problems labeled now, "
        f"{result.problems_done_before} found done; {s['records']} records, {s['steps']} steps "
        f"(mean {s['mean_steps']:.2f}/record), outcome accuracy {s['outcome_accuracy']:.3f}, "
        f"{result.completions} completions in {result.seconds:.1f}s"
    )
    for key, hist in s["label_histogram"].items():
        print(f"  eta={key:>5} label histogram [0,.1)..[.9,1]: {hist}")
    if s["truncated_completions"]:
        print(f"  {s['truncated_completions']} completions of this shard stopped at sampling.max_new_tokens="
              f"{cfg.sampling.max_new_tokens} before an answer (graded as written; raise it if answers are cut)")
    print(f"records: {result.records_path}")
    return 0


def cmd_merge(argv: Sequence[str]) -> int:
    from nemo_erprm.labeling.runner import merge_shards

    p = ArgumentParser(prog="label_rollouts.py merge", description="Merge shard outputs in input order.")
    p.add_argument("--dir", required=True, help="output.dir of the labeling run")
    p.add_argument("--out", help="merged file (default DIR/records.jsonl)")
    args = p.parse_args(argv)
    if args.out:
        _check_out_file(args.out)
    path, n = merge_shards(args.dir, args.out)
    print(f"merged {n} records into {path}")
    return 0


def cmd_relabel(argv: Sequence[str]) -> int:
    from nemo_erprm.labeling.er_label import labels_for_etas

    p = ArgumentParser(
        prog="label_rollouts.py relabel", description="Re-derive ER labels for other etas from stored rewards."
    )
    p.add_argument("--input", required=True)
    p.add_argument("--eta", type=_parse_eta, action="append", required=True, help="repeatable")
    p.add_argument("--replace", action="store_true", help="drop labels of other etas")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    _check_out_file(args.out, args.overwrite)
    records = _read_records(args.input)
    for r in records:
        new = labels_for_etas(r["step_rewards"], args.eta)
        r["labels"] = new if args.replace else {**r["labels"], **new}
    n = write_jsonl_atomic(args.out, records)
    print(f"relabeled {n} records for eta {args.eta} -> {args.out}")
    return 0


def cmd_export(argv: Sequence[str]) -> int:
    from nemo_erprm.labeling.formats import EXPORT_FORMATS, export_records

    p = ArgumentParser(prog="label_rollouts.py export", description="Export records for PRM trainers.")
    p.add_argument("--input", required=True)
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    p.add_argument("--eta", type=_parse_eta, default=2.0)
    p.add_argument("--threshold", type=_parse_threshold, default=0.5, help="trl: label = ER label > threshold")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    _check_out_file(args.out, args.overwrite)
    records = _read_records(args.input)
    n = write_jsonl_atomic(args.out, export_records(records, args.format, args.eta, args.threshold))
    print(f"exported {n} records as {args.format} (eta={args.eta}) -> {args.out}")
    return 0


USAGE = """usage: label_rollouts.py [run] --config FILE [--shard I --num-shards N] [key=value ...]
       label_rollouts.py merge --dir OUT_DIR [--out FILE]
       label_rollouts.py relabel --input records.jsonl --eta ETA [--eta ...] --out FILE [--overwrite]
       label_rollouts.py export --input records.jsonl --format text_value|trl --eta ETA --out FILE [--overwrite]

subcommands (each has --help):
  run      label rollouts with ER labels (the default subcommand)
  merge    merge the shard files of a run in input order
  relabel  re-derive ER labels for other etas from the stored rewards
  export   export records for other PRM trainers (text_value, trl)
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv and not argv[0].startswith("-") and "=" not in argv[0] and argv[0] not in SUBCOMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"error: unknown subcommand {argv[0]!r}{hint}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    handler = {"run": cmd_run, "merge": cmd_merge, "relabel": cmd_relabel, "export": cmd_export}[command]
    return run_reporting_errors(handler, argv)


if __name__ == "__main__":
    sys.exit(main())
