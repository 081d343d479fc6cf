"""``--scorer vllm:<export>`` without starting vLLM: what the engine is given (pooling runner,
classify conversion, step pooler, +/- tokens) and the errors named before it starts. The
scores themselves: tests/eval/test_vllm_scorer.py (real vLLM in .venv-vllm)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from transformers import AutoTokenizer

from nemo_erprm.errors import ConfigError
from nemo_erprm.eval.cli import main as bon
from nemo_erprm.eval.vllm_scorer import pooling_engine_args, read_export_meta, serve_command

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture
def lm_tokens_export(tiny_lm_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_lm_dir, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    meta = {"format_version": 1, "head": "lm_tokens", "step_tag": "ки", "step_tag_id": tok.convert_tokens_to_ids("ки"),
            "plus_token": "+", "plus_token_id": tok.convert_tokens_to_ids("+"), "minus_token": "-",
            "minus_token_id": tok.convert_tokens_to_ids("-")}
    (out / "prm_config.json").write_text(json.dumps(meta))
    return out


def test_engine_args_put_the_export_on_the_step_pooler(lm_tokens_export):
    meta = read_export_meta(lm_tokens_export)
    tok = AutoTokenizer.from_pretrained(str(lm_tokens_export))
    args = pooling_engine_args(meta, tok)
    assert args == {
        "runner": "pooling", "convert": "classify",
        "pooler_config": {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": meta["step_tag_id"]},
        # 2 labels from the LM head's rows, [+, -]: the pooler's softmax gives [P(+), P(-)]
        "hf_overrides": {"method": "no_post_processing", "classifier_from_token": ["+", "-"]},
    }
    scalar = {**meta, "head": "scalar"}
    assert "hf_overrides" not in pooling_engine_args(scalar, tok)  # score.weight/bias load as they are
    cmd = serve_command(lm_tokens_export, tok)
    assert cmd[:3] == ["vllm", "serve", str(lm_tokens_export)] and cmd[cmd.index("--dtype") + 1] == "float32"
    assert json.loads(cmd[cmd.index("--hf-overrides") + 1]) == args["hf_overrides"]
    assert json.loads(cmd[cmd.index("--pooler-config") + 1]) == args["pooler_config"]


def test_label_tokens_must_round_trip_by_name(lm_tokens_export):
    meta = read_export_meta(lm_tokens_export)
    tok = AutoTokenizer.from_pretrained(str(lm_tokens_export))
    bad = {**meta, "plus_token_id": len(tok) + 5}  # no such id: vLLM could not look it up by name
    with pytest.raises(ConfigError, match="do not round-trip"):
        pooling_engine_args(bad, tok)


@pytest.mark.parametrize("broken, message", [
    ("missing", "no such folder"),
    ("no_meta", "not an HF PRM export (needs config.json and prm_config.json"),
    ("bad_head", "head 'value'; vLLM scoring handles"),
])
def test_bad_vllm_spec_is_named_before_the_engine(broken, message, lm_tokens_export, tmp_path, shared_data, capsys):
    if broken == "no_meta":
        (lm_tokens_export / "prm_config.json").unlink()
    elif broken == "bad_head":
        meta = json.loads((lm_tokens_export / "prm_config.json").read_text())
        (lm_tokens_export / "prm_config.json").write_text(json.dumps({**meta, "head": "value"}))
    spec = f"vllm:{tmp_path / 'nowhere' if broken == 'missing' else lm_tokens_export}"
    rc = bon(["--candidates", str(shared_data / "bon" / "gsm8k_test_4_model_solutions.jsonl"), "--limit", "2",
              "--scorer", spec, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--scorer {spec}" in err and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed: the missing-vLLM message cannot be checked")
def test_vllm_spec_without_vllm_says_where_vllm_is(lm_tokens_export, tmp_path, shared_data, capsys):
    rc = bon(["--candidates", str(shared_data / "bon" / "gsm8k_test_4_model_solutions.jsonl"), "--limit", "2",
              "--scorer", f"vllm:{lm_tokens_export}", "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2 and "needs vLLM" in capsys.readouterr().err
