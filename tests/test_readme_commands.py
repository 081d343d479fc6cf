"""The README's shell commands, as written (a doc test): a quoting slip such as a marker that
bash passes as a backslash and an ``n`` cannot come back unnoticed.

- every ``bash`` block is valid bash (``bash -n``);
- every command that runs one of our entry points (``tools/*.py``, ``python -m nemo_erprm.*``,
  ``torchrun ... -m nemo_erprm.train``, ``benchmarks/*.py``, and the config + overrides handed
  to ``slurm/*.sh``) is split by bash itself and parsed by that tool's own argument parser, in
  this process, stopping right after parsing; its config file and ``key=value`` overrides load
  through the stage's schema (keys, types, number ranges; paths are not required to exist);
- the commands that need no model, GPU or cluster run for real, from a copy of the layout
  (``tools``, ``conf`` and ``../shared`` linked into a temporary folder): the labeling and
  training ``--print-config``, ``relabel``/``export`` on a committed records file, and
  Best-of-N with ``--scorer none``.
The serving commands with their response markers are started as written by
``tests/serving/test_pytriton_aligner.py`` and ``test_aligner_contract.py``.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PLACEHOLDER = re.compile(r"(^|[\s=/])\.\.\.($|\s)")  # an elided argument: not a command line
RUNNABLE = [  # run for real, as written
    "python tools/label_rollouts.py --config conf/label_gsm8k_mistral.yaml --print-config",
    "python -m nemo_erprm.train --config conf/erprm_mistral_7b.yaml --print-config",
    "python tools/label_rollouts.py relabel --input records.jsonl --eta 5 --eta=-inf --out relabeled.jsonl",
    "python tools/label_rollouts.py export --input records.jsonl --format text_value --eta 2 --out train.jsonl",
    "python tools/label_rollouts.py export --input records.jsonl --format trl --eta 2 --threshold 0.5 --out trl.jsonl",
    "python tools/best_of_n.py --candidates ../shared/data/bon/gsm8k_test_4_model_solutions.jsonl --scorer none "
    "--out outputs/bon/none",
]


def bash_blocks() -> list[tuple[int, str]]:
    """(first line, text) of every fenced ``bash`` block."""
    blocks, current, start, lang = [], None, 0, ""
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current, start, lang = [], number, line[3:].strip()
            else:
                if lang == "bash":
                    blocks.append((start, "\n".join(current)))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands() -> list[tuple[int, str]]:
    """Each command of the bash blocks (continuation lines joined, comments kept for bash)."""
    out = []
    for start, text in bash_blocks():
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            if line.strip() and not line.strip().startswith("#"):
                out.append((start, line.strip()))
    return out


def bash_argv(command: str) -> list[str]:
    """The words bash passes for ``command`` (quotes, escapes, comments), no expansion run."""
    assert "$(" not in command and "`" not in command, command
    done = subprocess.run(["bash", "-c", 'set -f; eval "set -- $1"; printf "%s\\0" "$@"', "_", command],
                          capture_output=True, check=True)
    return done.stdout.decode().split("\0")[:-1]


class Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def entry_point(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """``("script"|"module", target, arguments)`` of a command that runs our code, else None."""
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return None
    head = argv[0]
    if head == "torchrun":
        m = argv.index("-m")
        return "module", argv[m + 1], argv[m + 2:]
    if head == "sbatch":
        script = next((a for a in argv if a.startswith("slurm/")), None)
        return ("slurm", script, argv[argv.index(script) + 1:]) if script else None
    if head.endswith("python"):
        if argv[1] == "-m":
            return "module", argv[2], argv[3:]
        return "script", argv[1], argv[2:]
    return None


def parse_only(kind: str, target: str, args: list[str], monkeypatch) -> argparse.Namespace:
    """Run the entry point as ``__main__`` with ``args`` until its parser returns."""
    def stop_after(method):
        def parse(self, *a, **kw):
            raise Parsed(method(self, *a, **kw))
        return parse

    for name in ("parse_args", "parse_intermixed_args"):
        monkeypatch.setattr(argparse.ArgumentParser, name, stop_after(getattr(argparse.ArgumentParser, name)))
    monkeypatch.setattr(sys, "argv", [target, *args])
    if kind == "module":  # run_module executes a fresh copy as __main__
        monkeypatch.delitem(sys.modules, target, raising=False)
    with pytest.raises(Parsed) as parsed:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(REPO / target), run_name="__main__")
    return parsed.value.namespace


def config_schema(target: str, config: str, overrides: list[str]):
    from nemo_erprm.labeling.config import LabelConfig
    from nemo_erprm.training.config import TrainConfig

    if "label" in target:
        return LabelConfig
    if "train" in target:
        return TrainConfig
    if "eta_sweep" in target:
        from nemo_erprm.experiments.eta_sweep import SweepConfig, executor_of
        from nemo_erprm.experiments.slurm_sweep import SlurmSweepConfig

        return SlurmSweepConfig if executor_of(config, overrides) == "slurm" else SweepConfig
    return None


def load_config(target: str, config: str | None, overrides: list[str]) -> None:
    """The config and overrides through the stage's schema (keys, types, ranges), no path checks."""
    from nemo_erprm.yaml_config import load_structured

    schema = config_schema(target, config or "", overrides)
    if schema is None or config is None or not (REPO / config).is_file():  # CONF: a placeholder
        return
    load_structured(schema, str(REPO / config), overrides)


def test_the_readme_has_commands_of_every_stage():
    text = " ".join(c for _, c in commands())
    for tool in ("tools/label_rollouts.py", "tools/convert_hf_checkpoint.py", "-m nemo_erprm.train",
                 "tools/best_of_n.py", "tools/serve_prm.py", "slurm/train_erprm.sh"):
        assert tool in text
    assert all(any(c.startswith(r) for _, c in commands()) for r in RUNNABLE)  # the list follows the README


@pytest.mark.parametrize("start, block", bash_blocks(), ids=lambda v: str(v) if isinstance(v, int) else None)
def test_every_bash_block_is_valid_bash(start, block):
    done = subprocess.run(["bash", "-n", "-c", block], capture_output=True, text=True)
    assert done.returncode == 0, f"README.md:{start}: {done.stderr}"


def ours(all_commands):
    for start, command in all_commands:
        if PLACEHOLDER.search(command):
            continue
        if "$(" in command or "`" in command:  # a substitution would run here: only other programs' lines
            assert "tools/" not in command and "nemo_erprm" not in command, command
            continue
        entry = entry_point(bash_argv(command))
        if entry is not None:
            yield pytest.param(start, command, entry, id=f"{start}:{command[:60]}")


@pytest.mark.parametrize("start, command, entry", list(ours(commands())))
def test_every_command_parses_with_its_tool(start, command, entry, monkeypatch):
    kind, target, args = entry
    where = f"README.md:{start}: {command}"
    if kind == "slurm":  # slurm/*.sh CONFIG [key=value ...]: the config and overrides it passes on
        load_config(target, args[0], args[1:])
        return
    if target.startswith("benchmarks/") and "ArgumentParser" not in (REPO / target).read_text():
        assert args == [], f"{where}: {target} takes no arguments"  # it would run, not parse
        return
    try:
        ns = parse_only(kind, target, args, monkeypatch)
    except SystemExit as e:  # argparse refused the line
        pytest.fail(f"{where}: the parser exited with {e.code}")
    load_config(target, getattr(ns, "config", None), list(getattr(ns, "overrides", None) or []))


@pytest.fixture(scope="module")
def layout(tmp_path_factory, shared_data):
    """A folder laid out like a checkout (tools, conf linked, ../shared beside it) with the
    committed SmolLM2-labeled records as `records.jsonl`."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "main"
    work.mkdir()
    for name in ("tools", "conf"):
        (work / name).symlink_to(REPO / name)
    (root / "shared").symlink_to(shared_data.parent)
    shutil.copy(REPO / "conf" / "data" / "gsm8k_train_smollm2_n4.records.jsonl", work / "records.jsonl")
    return work


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=lambda c: c.split(" --")[0][-40:] + c[-24:])
def test_runnable_commands_run_as_written(command, layout):
    argv = bash_argv(command)
    assert argv[0] == "python"
    done = subprocess.run([sys.executable, *argv[1:]], cwd=layout, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    if out:
        assert (layout / out).exists()
