"""The arithmetic policy: task tokenizer, prompt masking as the labeling backend encodes, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_erprm.experiments import arith_policy as ap
from nemo_erprm.experiments import arith_task as at
from nemo_erprm.labeling.backends.base import PromptConfig, format_prompt
from nemo_erprm.labeling.backends.plan import encode_prompt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    at.write_splits(out, seed=0, n_train=120, n_val=6, n_test=0)
    return out


@pytest.fixture(scope="module")
def tokenizer(data):
    from nemo_erprm.jsonl import read_jsonl

    return ap.build_tokenizer(ap.tokenizer_texts(read_jsonl(data / "train.jsonl"), PromptConfig()), 400)


def test_tokenizer_digits_single_and_step_tag_one_token(tokenizer):
    ids = tokenizer("123 + 45 = 168", add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert [p for p in pieces if p.strip().isdigit()] == list("12345168")
    assert all(len(p.strip()) <= 1 for p in pieces if any(c.isdigit() for c in p))
    assert len(tokenizer("ки", add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.decode(ids) == "123 + 45 = 168"
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_examples_mask_the_prompt_as_the_backend_encodes_it(tokenizer, data):
    from nemo_erprm.jsonl import read_jsonl

    problems = read_jsonl(data / "train.jsonl")[:5]
    for problem, ex in zip(problems, ap.build_examples(tokenizer, problems)):
        prompt = format_prompt(tokenizer, problem["question"], PromptConfig())
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
        prompt_ids = list(encode_prompt(tokenizer, prompt, chat_rendered=True))
        n = len(prompt_ids)
        assert ex["input_ids"][:n] == prompt_ids
        assert ex["labels"][:n] == [-100] * n
        assert ex["labels"][n:] == ex["input_ids"][n:]
        assert ex["input_ids"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ex["input_ids"][n:-1]) == problem["answer"]
        # a step prefix (what the rollouts continue from) encodes as a prefix of the training text
        first_step = at.segment(problem["answer"])[0]
        assert list(encode_prompt(tokenizer, prompt + first_step, True)) == ex["input_ids"][: len(
            encode_prompt(tokenizer, prompt + first_step, True))]


def test_collator_pads_inputs_and_labels():
    batch = ap._Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                    {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_bad_shape_and_threads_are_config_errors():
    from nemo_erprm.errors import ConfigError

    with pytest.raises(ConfigError, match="--hidden"):
        ap.ModelShape(hidden=130, heads=4)
    with pytest.raises(ConfigError, match="--threads"):
        ap.TrainSettings(threads=8)


def _cli(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nemo_erprm.experiments.arith_policy", "--train", str(data / "train.jsonl"),
           "--val", str(data / "val.jsonl"), "--out", str(out), "--steps", "4", "--batch-size", "4", "--lr", "1e-3",
           "--seed", "3", "--layers", "1", "--hidden", "32", "--vocab-size", "400", "--threads", "1",
           "--eval-problems", "3", "--eval-samples", "2", "--temperature", "0.7", "--max-new-tokens", "12", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_trains_saves_a_loadable_policy_and_refuses_an_existing_out(data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "policy"
    r = _cli(data, out)
    assert r.returncode == 0, r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".policy.tmp")]  # temp folder renamed
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(tok("ки", add_special_tokens=False)["input_ids"]) == 1 and tok.chat_template == ap.CHAT_TEMPLATE
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    summary = json.loads((out / "policy_summary.json").read_text())
    assert (summary["steps"], summary["lr"], summary["seed"], summary["temperature"]) == (4, 1e-3, 3, 0.7)
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert (summary["eval_problems"], summary["samples_per_problem"]) == (3, 2)
    # an exactly right solution also has the right final answer
    assert 0 <= summary["pass@1_exact"] <= summary["pass@1"] <= 1 and summary["train_time_s"] > 0
    wrong = round(6 * (1 - summary["pass@1_exact"]))
    assert sum(summary["first_error_histogram"].values()) == wrong
    assert summary["completions_per_s"] > 0 and json.loads(r.stdout.strip().splitlines()[-1])["out"] == str(out)

    again = _cli(data, out)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert again.stderr.count("\n") == 1


def test_an_existing_empty_out_is_refused_before_training(data, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    rc = ap.main(["--train", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out") and "already exists" in err and list(out.iterdir()) == []
