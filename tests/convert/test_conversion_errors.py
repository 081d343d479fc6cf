"""Bad checkpoints and step tags fail with a clear error naming the tensor or the fix."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_hf

REPO = Path(__file__).resolve().parents[2]
CONVERT = REPO / "tools" / "convert_hf_checkpoint.py"

pytestmark = pytest.mark.slow


def convert(*args):
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data):
    return build_tiny_hf(tmp_path_factory.mktemp("err") / "hf", "llama")


def edit_tensors(src: Path, dst: Path, fn):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    fn(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_unsupported_architecture(tmp_path, shared_data):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    proc = convert("--hf-dir", tmp_path / "gpt2", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert "unsupported architecture ['GPT2LMHeadModel']" in proc.stderr and "LlamaForCausalLM" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_missing_unexpected_and_misshapen_tensors(tiny, tmp_path):
    miss = edit_tensors(tiny, tmp_path / "miss", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    proc = convert("--hf-dir", miss, "--out", tmp_path / "o1")
    assert proc.returncode == 2 and "missing tensor(s) ['model.layers.1.mlp.up_proj.weight']" in proc.stderr

    import torch

    extra = edit_tensors(tiny, tmp_path / "extra", lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.ones(2)}))
    proc = convert("--hf-dir", extra, "--out", tmp_path / "o2")
    assert proc.returncode == 2 and "model.layers.0.mlp.extra.weight" in proc.stderr

    def shrink(t):
        t["model.layers.0.self_attn.o_proj.weight"] = t["model.layers.0.self_attn.o_proj.weight"][:, :32].contiguous()

    bad = edit_tensors(tiny, tmp_path / "shape", shrink)
    proc = convert("--hf-dir", bad, "--out", tmp_path / "o3")
    assert proc.returncode == 2 and "model.layers.0.self_attn.o_proj.weight" in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr


def test_step_tag_not_single_token(tiny, tmp_path):
    proc = convert("--hf-dir", tiny, "--out", tmp_path / "o", "--step-tag", "<step>")
    assert proc.returncode == 2
    assert "'<step>' is not a single token" in proc.stderr and "candidates: ['ки'" in proc.stderr
    assert "(--add-step-tag-token;" in proc.stderr  # this tool's flag, not the training key
    proc = convert("--hf-dir", tiny, "--out", tmp_path / "o", "--step-tag", "<step>", "--add-step-tag-token")
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "o" / "prm_config.json").read_text())
    assert meta["step_tag_added"] is True and meta["step_tag"] == "<step>"
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    assert meta["step_tag_id"] == vocab  # the new row
    from nemo.lightning.io import load_context

    assert load_context(str(tmp_path / "o" / "context"), subpath="model.config").vocab_size == vocab + 1


def test_plus_token_must_be_single(tiny, tmp_path):
    proc = convert("--hf-dir", tiny, "--out", tmp_path / "o", "--plus-token", "good step")
    assert proc.returncode == 2 and "--plus-token 'good step' is not a single token" in proc.stderr


def test_rope_scaling_nemo_would_drop_is_refused(tiny, tmp_path):
    """NeMo 2.7.3's importers translate only Llama's llama3 RoPE scaling; a linear (or dynamic,
    yarn) one they drop silently, and the PRM would compute other logits than the model."""
    shutil.copytree(tiny, tmp_path / "linear")
    config = json.loads((tmp_path / "linear" / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    (tmp_path / "linear" / "config.json").write_text(json.dumps(config))
    proc = convert("--hf-dir", tmp_path / "linear", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert "config.json: rope_scaling type 'linear' is not supported (only 'llama3' on Llama models)" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["empty_step_tag", "blank_step_tag", "no_config_json"])
def test_refused_before_any_model_loads(tiny, tmp_path, case):
    """Checked with the arguments, before NeMo or the model load: an empty step tag used to loop
    over the text until the machine ran out of memory (24 GB), and a folder without
    config.json took ~13 s to refuse."""
    hf_dir = tiny
    extra = []
    if case == "no_config_json":
        hf_dir = tmp_path / "no_config"
        shutil.copytree(tiny, hf_dir)
        (hf_dir / "config.json").unlink()
    else:
        extra = ["--step-tag", "" if case == "empty_step_tag" else " "]
    # the timeout bounds the old empty-tag path, which never finished
    proc = subprocess.run([sys.executable, str(CONVERT), "--hf-dir", str(hf_dir), "--out", str(tmp_path / "o"), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert ("--step-tag must be a non-blank string" if "step_tag" in case else "no config.json") in lines[0]
    assert "nemo" not in proc.stderr.lower() and not (tmp_path / "o").exists()
