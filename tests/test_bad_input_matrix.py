"""Every tool, every bad input of issues 17 and 22: exit code 2, one ``error:`` line naming the
file:line, field or value, no traceback, and nothing written or changed (the folder holding the
case's inputs and outputs is compared file by file before and after). Issue 22: bytes that are
not UTF-8 in every input (named by file, line and byte offset), and nonsense numbers (nan, inf,
out of range) named by key and range.

The tools run as a user runs them (a subprocess each); the training cases call
``nemo_erprm.train.main`` in this process (its import costs ~10 s), plus one subprocess case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_hf

REPO = Path(__file__).resolve().parents[1]
QUESTION = "Tom has 3 apples and buys 4 more. How many?"
RECORD = {"version": 1, "id": "p1/0", "problem_id": "p1", "question": QUESTION, "gold": "7",
          "steps": ["3 + 4 = 7\n", "#### 7"], "step_rewards": [[1, 1], [1]], "n_correct": [2, 1], "n_total": [2, 1],
          "outcome": True, "labels": {"2": [0.9, 1.0]}, "step_tag": "ки", "meta": {}}


def not_utf8_file(first: dict) -> tuple[bytes, str]:
    """A valid first line (with multi-byte characters before the bad byte: the offset counts
    bytes), then a line holding a Latin-1 "é" (0xe9); the bytes and the error's ``:line: ...``."""
    good = (json.dumps(first, ensure_ascii=False) + "\n").encode()
    bad = b'{"question": "caf\xe9"}\n'
    return good + bad, f":2: not UTF-8 (byte offset {len(good) + bad.index(0xe9)}: 0xe9)"


NOT_UTF8 = {  # file name -> (bytes, error tail)
    "problems_not_utf8.jsonl": not_utf8_file({"question": "Ёжик has 3 apples", "answer": "3 + 4 = 7\n#### 7"}),
    "records_not_utf8.jsonl": not_utf8_file(RECORD),
    "candidates_not_utf8.jsonl": not_utf8_file({"question": QUESTION, "gold": "7", "candidates": ["3 + 4 = 7\n#### 7"]}),
    "not_utf8.yaml": (b"# recipe\n# caf\xe9\n", ":2: not UTF-8 (byte offset 14: 0xe9)"),
}


def not_utf8(name: str) -> str:
    return "{R}/" + name + NOT_UTF8[name][1]


@pytest.fixture(scope="module")
def root(tmp_path_factory, shared_data) -> Path:
    """Inputs shared by the cases: a file where folders are expected, a tiny HF model (and a
    truncated copy), a tiny HF PRM export, a fake PRM checkpoint, candidates and records."""
    r = tmp_path_factory.mktemp("bad_input")
    (r / "a_file").write_text("not a folder\n")
    for name, (data, _) in NOT_UTF8.items():
        (r / name).write_bytes(data)
    hf = build_tiny_hf(r / "hf", "llama")
    trunc = r / "hf_truncated"
    trunc.mkdir()
    for f in hf.iterdir():
        data = f.read_bytes()
        (trunc / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf))
    for name, source in (("hf_prm", hf), ("hf_prm_truncated", trunc)):
        export = r / name  # an lm_tokens export is the backbone plus prm_config.json
        export.mkdir()
        for f in source.iterdir():
            (export / f.name).write_bytes(f.read_bytes())
        (export / "prm_config.json").write_text(json.dumps({
            "head": "lm_tokens", "step_tag": "ки", "step_tag_id": tok.convert_tokens_to_ids("ки"),
            "plus_token_id": tok.convert_tokens_to_ids("+"), "minus_token_id": tok.convert_tokens_to_ids("-")}))
    for d in ("ckpt/context", "ckpt/weights", "not_a_ckpt", "existing_out"):
        (r / d).mkdir(parents=True)
    (r / "existing_out" / "config.json").write_text("{}")
    long_steps = "\n".join(f"Step {i}: add {i} apples to the basket and count them again." for i in range(40))
    rows = [{"question": QUESTION, "gold": "7", "candidates": ["3 + 4 = 7\n#### 7", long_steps + "\n#### 7"]},
            {"question": QUESTION, "gold": "7", "candidates": "not a list"}]
    (r / "candidates.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    (r / "long.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (r / "offline.jsonl").write_text(json.dumps({
        "id": "p1", "question": QUESTION, "gold": "7", "steps": ["3 + 4 = 7\n", "#### 7"],
        "step_rewards": [[1, 1, 0, 1], [1]]}) + "\n")
    proc = run_tool("tools/label_rollouts.py", "input.path=" + str(r / "offline.jsonl"), "input.format=offline",
                    "input.id_field=id", "backend.name=offline", f"output.dir={r / 'labels'}", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return r


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def assert_one_line_error(stderr: str, expected: str | tuple[str, ...]) -> None:
    """One ``error:`` line holding ``expected`` (or each of several parts)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in lines[0], lines[0]


def with_root(expected: str | tuple[str, ...], root: Path) -> str | tuple[str, ...]:
    if isinstance(expected, str):
        return expected.replace("{R}", str(root))
    return tuple(part.replace("{R}", str(root)) for part in expected)


LABEL = "tools/label_rollouts.py"
LABEL_CONF = ["--config", "conf/demo/label.yaml", "input.limit=1", "--no-progress"]
RECORDS = "{R}/labels/records.shard-00000-of-00001.jsonl"
CASES = {
    "label": [
        ("output_dir_is_a_file", [*LABEL_CONF, "output.dir={R}/a_file"], "output.dir={R}/a_file: {R}/a_file is a file"),
        ("output_dir_under_a_file", [*LABEL_CONF, "output.dir={R}/a_file/out"], "{R}/a_file is a file, not a folder"),
        ("model_typo_before_run_yaml", [*LABEL_CONF, "backend.model={R}/SmolLM2-typo", "output.dir={R}/new_labels"],
         "backend.model={R}/SmolLM2-typo: model"),
        ("unknown_key_on_command_line", [*LABEL_CONF, "sampling.nn=3", "output.dir={R}/new_labels"],
         "command line: Key 'nn' not in 'SamplingConfig' (key: sampling.nn)"),
        ("config_file_missing", ["--config", "{R}/nope.yaml"], "--config {R}/nope.yaml: no such file"),
        ("relabel_eta_nan", ["relabel", "--input", RECORDS, "--eta", "nan", "--out", "{R}/relabeled.jsonl"],
         "--eta must be a number, inf or -inf, got 'nan'"),
        ("relabel_out_is_a_folder", ["relabel", "--input", RECORDS, "--eta", "5", "--out", "{R}/existing_out"],
         "--out {R}/existing_out: is a folder"),
        ("export_eta_nan", ["export", "--input", RECORDS, "--format", "trl", "--eta", "nan", "--out", "{R}/x.jsonl"],
         "got 'nan'"),
        ("export_bad_record_line", ["export", "--input", "{R}/candidates.jsonl", "--format", "trl", "--out",
                                    "{R}/x.jsonl"], "{R}/candidates.jsonl:1: "),
        ("merge_missing_dir", ["merge", "--dir", "{R}/no_such_dir"], "{R}/no_such_dir: no records.shard"),
        ("mistyped_subcommand", ["merg", "--dir", "{R}/labels"], "unknown subcommand 'merg' (did you mean 'merge'?)"),
        # issue 22: bytes that are not UTF-8
        ("input_not_utf8", [*LABEL_CONF, "input.path={R}/problems_not_utf8.jsonl", "output.dir={R}/new_labels"],
         not_utf8("problems_not_utf8.jsonl")),
        ("config_not_utf8", ["--config", "{R}/not_utf8.yaml", "output.dir={R}/new_labels"], not_utf8("not_utf8.yaml")),
        ("relabel_input_not_utf8", ["relabel", "--input", "{R}/records_not_utf8.jsonl", "--eta", "5", "--out",
                                    "{R}/relabeled.jsonl"], not_utf8("records_not_utf8.jsonl")),
        ("export_input_not_utf8", ["export", "--input", "{R}/records_not_utf8.jsonl", "--format", "trl", "--out",
                                   "{R}/x.jsonl"], not_utf8("records_not_utf8.jsonl")),
        # issue 22: nonsense numbers (temperature=nan wrote run.yaml, then refused it; inf generated)
        ("temperature_nan", [*LABEL_CONF, "sampling.temperature=nan", "output.dir={R}/new_labels"],
         ("sampling.temperature", "got nan")),
        ("temperature_inf", [*LABEL_CONF, "sampling.temperature=inf", "output.dir={R}/new_labels"],
         ("sampling.temperature", "got inf")),
        *[(f"export_threshold_{name}", ["export", "--input", RECORDS, "--format", "trl", "--threshold", value,
                                        "--out", "{R}/x.jsonl"],
           f"--threshold must be in [0, 1) (trl label: ER label > threshold), got {float(value)}")
          for name, value in (("nan", "nan"), ("above_one", "5"), ("negative", "-1"))],
    ],
    "best_of_n": [
        ("out_is_a_file", ["--candidates", "{R}/candidates.jsonl", "--scorer", "none", "--out", "{R}/a_file"],
         "--out {R}/a_file: {R}/a_file is a file, not a folder"),
        ("out_under_a_file", ["--candidates", "{R}/candidates.jsonl", "--scorer", "none", "--out", "{R}/a_file/bon"],
         "{R}/a_file is a file, not a folder"),
        ("bad_candidate_line", ["--candidates", "{R}/candidates.jsonl", "--scorer", "none", "--out", "{R}/bon"],
         "{R}/candidates.jsonl:2: bad candidate record"),
        ("over_long_candidate", ["--candidates", "{R}/long.jsonl", "--scorer", "{R}/hf_prm", "--max-length", "64",
                                 "--out", "{R}/bon"],
         "{R}/long.jsonl:1: candidate '1' (40 steps) does not fit in --max-length 64 tokens"),
        ("truncated_export", ["--candidates", "{R}/long.jsonl", "--scorer", "{R}/hf_prm_truncated", "--out", "{R}/bon"],
         "{R}/hf_prm_truncated/model.safetensors: truncated safetensors file"),
        ("candidates_missing", ["--candidates", "{R}/nope.jsonl", "--scorer", "none", "--out", "{R}/bon"],
         "--candidates {R}/nope.jsonl: no such file"),
        ("scorer_missing", ["--candidates", "{R}/long.jsonl", "--scorer", "{R}/nope", "--out", "{R}/bon"],
         "--scorer {R}/nope: no such folder"),
        ("n_max_zero", ["--candidates", "{R}/long.jsonl", "--scorer", "none", "--n-max", "0", "--out", "{R}/bon"],
         "--n-max must be at least 1, got 0"),
        ("batch_size_zero", ["--candidates", "{R}/long.jsonl", "--scorer", "none", "--batch-size", "0", "--out",
                             "{R}/bon"], "--batch-size must be at least 1, got 0"),
        ("unknown_aggregation", ["--candidates", "{R}/long.jsonl", "--scorer", "none", "--aggregation", "median",
                                 "--out", "{R}/bon"], "--aggregation: unknown ['median']"),
        ("unknown_option", ["--candidates", "{R}/long.jsonl", "--scorer", "none", "--out", "{R}/bon", "--nmax", "4"],
         "best_of_n.py: unrecognized arguments: --nmax 4"),
        ("candidates_not_utf8", ["--candidates", "{R}/candidates_not_utf8.jsonl", "--scorer", "none", "--out",
                                 "{R}/bon"], not_utf8("candidates_not_utf8.jsonl")),
    ],
    "convert": [
        ("tp_zero", ["--hf-dir", "{R}/hf", "--out", "{R}/prm", "--tp", "0"], "--tp must be at least 1, got 0"),
        ("hf_dir_missing", ["--hf-dir", "{R}/nope", "--out", "{R}/prm"], "--hf-dir {R}/nope: model"),
        ("truncated_safetensors", ["--hf-dir", "{R}/hf_truncated", "--out", "{R}/prm"],
         "{R}/hf_truncated/model.safetensors: truncated safetensors file"),
        ("out_exists", ["--hf-dir", "{R}/hf", "--out", "{R}/existing_out"],
         "--out {R}/existing_out: already exists and is not empty"),
        ("out_is_a_file", ["--hf-dir", "{R}/hf", "--out", "{R}/a_file"], "--out {R}/a_file: exists and is not a folder"),
    ],
    "export": [
        ("ckpt_missing", ["--ckpt", "{R}/nope", "--out", "{R}/hf_out"], "--ckpt {R}/nope: no such folder"),
        ("not_a_checkpoint", ["--ckpt", "{R}/not_a_ckpt", "--out", "{R}/hf_out"], "not a PRM checkpoint"),
        ("out_exists_without_overwrite", ["--ckpt", "{R}/ckpt", "--out", "{R}/existing_out"],
         "--out {R}/existing_out: already exists and is not empty; choose another --out or pass --overwrite"),
        ("out_is_a_file", ["--ckpt", "{R}/ckpt", "--out", "{R}/a_file"], "--out {R}/a_file: exists and is not a folder"),
        ("out_under_a_file", ["--ckpt", "{R}/ckpt", "--out", "{R}/a_file/hf"], "{R}/a_file is a file, not a folder"),
    ],
    "serve": [
        ("max_batch_zero", ["--scorer", "{R}/hf_prm", "--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        ("scorer_missing", ["--scorer", "{R}/nope"], "--scorer {R}/nope: no such folder"),
        ("token_file_missing", ["--scorer", "{R}/hf_prm", "--token-file", "{R}/nope.txt"],
         "--token-file {R}/nope.txt: no such file"),
        ("port_out_of_range", ["--scorer", "{R}/hf_prm", "--port", "70000"], "--port must be in 1..65535, got 70000"),
        ("truncated_export", ["--scorer", "{R}/hf_prm_truncated"], "{R}/hf_prm_truncated/model.safetensors: truncated"),
        ("bad_choice", ["--scorer", "{R}/hf_prm", "--protocol", "grpc"], "argument --protocol: invalid choice: 'grpc'"),
    ],
}
TOOLS = {"label": LABEL, "best_of_n": "tools/best_of_n.py", "convert": "tools/convert_hf_checkpoint.py",
         "export": "tools/export_hf_checkpoint.py", "serve": "tools/serve_prm.py"}


@pytest.mark.parametrize("tool,argv,expected", [pytest.param(t, a, e, id=f"{t}-{name}")
                                                for t, cases in CASES.items() for name, a, e in cases])
def test_bad_input_is_one_line_exit_2_nothing_written(root, tool, argv, expected):
    before = snapshot(root)
    proc = run_tool(TOOLS[tool], *[a.replace("{R}", str(root)) for a in argv])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert_one_line_error(proc.stderr, with_root(expected, root))
    assert snapshot(root) == before


TRAIN_CASES = [
    ("micro_batch_size_zero", ["data.micro_batch_size=0"], "data.micro_batch_size=0: must be >= 1"),
    ("unknown_key_on_command_line", ["optim.lrr=1e-5"], "error: command line: Key 'lrr' not in 'OptimConfig' (key: optim.lrr)"),
    ("eta_nan", ["data.eta=nan"], "data.eta=nan: must be a number"),
    ("not_a_multiple", ["data.global_batch_size=5"], "data.global_batch_size=5 must be a multiple of data.micro_batch_size=2"),
    ("init_from_missing", ["model.init_from={R}/nope"], "model.init_from: {R}/nope is not a directory"),
    ("data_missing", ["data.train={R}/nope.jsonl"], "data.train: {R}/nope.jsonl does not exist"),
    # issue 22: bytes that are not UTF-8 (the data file is read before the run folder is made)
    ("data_not_utf8", ["data.train={R}/records_not_utf8.jsonl"], not_utf8("records_not_utf8.jsonl")),
    ("config_not_utf8", ["--config", "{R}/not_utf8.yaml"], not_utf8("not_utf8.yaml")),  # the last --config wins
    ("override_not_utf8", ["run.name=caf\udce9"], "command line: run.name: not UTF-8 (byte offset 12: 0xe9)"),
    # issue 22: nonsense numbers, named with their key and range
    ("lr_nan", ["optim.lr=nan"], "optim.lr=nan: must be a finite number > 0"),
    ("lr_inf", ["optim.lr=inf"], "optim.lr=inf: must be a finite number > 0"),
    ("max_steps_negative", ["trainer.max_steps=-1"],
     "trainer.max_steps=-1: must be >= 1 (null: trainer.max_epochs sets the length)"),
    ("max_steps_zero", ["trainer.max_steps=0"], "trainer.max_steps=0: must be >= 1 (null: trainer.max_epochs"),
    ("seq_length_zero", ["model.seq_length=0"], "model.seq_length=0: must be >= 1"),
]


@pytest.fixture(scope="module")
def train_main():
    """``main``, with the imports that log NeMo's notices done first (the subprocess case
    checks that the command line shows none of them)."""
    from nemo_erprm.train import main
    from nemo_erprm.training.config import load_train_config

    load_train_config(str(REPO / "conf" / "tiny_cpu.yaml"), [f"data.train={REPO / 'conf/data/gsm8k_train_smollm2_n4.records.jsonl'}"])
    return main


@pytest.mark.parametrize("overrides,expected", [pytest.param(o, e, id=n) for n, o, e in TRAIN_CASES])
def test_train_bad_input(root, train_main, overrides, expected, capsys, monkeypatch):
    main = train_main
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ERPRM_VERBOSE", "1")  # no log filter installed into the test process
    before = snapshot(root)
    argv = ["--config", "conf/tiny_cpu.yaml", f"run.output_dir={root}/train", *overrides]
    assert main([a.replace("{R}", str(root)) for a in argv]) == 2
    assert_one_line_error(capsys.readouterr().err, with_root(expected, root))
    assert snapshot(root) == before


def test_train_command_line_prints_one_line(root):
    before = snapshot(root)
    proc = run_tool("-m", "nemo_erprm.train", "--config", "conf/tiny_cpu.yaml", f"run.output_dir={root}/train",
                    "data.micro_batch_size=0")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, "data.micro_batch_size=0: must be >= 1")
    assert snapshot(root) == before


def test_demo_train_config_points_at_what_the_demo_writes():
    """`python -m nemo_erprm.train --config conf/demo/train.yaml` after `make demo` (issue 17:
    init_from named a folder the demo never made)."""
    import yaml

    cfg = yaml.safe_load((REPO / "conf" / "demo" / "train.yaml").read_text())
    source = (REPO / "nemo_erprm" / "experiments" / "demo.py").read_text()
    assert 'out / f"prm_{head}"' in source and 'default="outputs/demo"' in source  # where stage 2 writes
    assert cfg["model"]["init_from"] == "outputs/demo/prm_lm_tokens" and cfg["model"]["head"] == "lm_tokens"
    assert cfg["data"]["train"] == "outputs/demo/labels/records.shard-00000-of-00001.jsonl"
