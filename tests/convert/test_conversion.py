"""HF -> PRM -> HF on tiny models of each family: logits parity at TP=1/TP=2/PP=2, bit-exact
round trip, HF-side scores equal to the megatron PRM's, and clear errors on bad checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_erprm.runtime.parallel import free_port
from tests.tiny_models import build_tiny_hf

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("convert_worker.py")
CONVERT = REPO / "tools" / "convert_hf_checkpoint.py"
EXPORT = REPO / "tools" / "export_hf_checkpoint.py"
FAMILIES = {"llama_gqa": ("llama", False), "mistral": ("mistral", False), "qwen2_bias": ("qwen2", False),
            "llama_tied": ("llama", True)}
ITEMS = [("What is 2+3?", ["2 plus 3 is 5.", "#### 5"]),
         ("Tom has 3 apples and buys 4 more. How many?", ["He buys 4 more.", "So he has 3 + 4 = 7 apples.", "#### 7"])]

pytestmark = pytest.mark.slow


def run(cmd, ok=True):
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def torchrun(n, *args):
    run(["-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", WORKER, *args])


@pytest.fixture(scope="module")
def converted(tmp_path_factory, shared_data):
    """{name: (hf_dir, lm_tokens ckpt)} for every family."""
    root = tmp_path_factory.mktemp("conv")
    out = {}
    for name, (family, tied) in FAMILIES.items():
        hf = build_tiny_hf(root / f"hf_{name}", family, tied=tied)
        ckpt = root / f"prm_{name}"
        run([CONVERT, "--hf-dir", hf, "--out", ckpt])
        out[name] = (hf, ckpt)
    return out


def samples_for(hf_dir, path):
    from transformers import AutoTokenizer

    from nemo_erprm.data.tokenize import StepTokenizer
    from nemo_erprm.labeling.segmentation import render_prm_input

    st = StepTokenizer(AutoTokenizer.from_pretrained(str(hf_dir)), "ки", 64)
    samples = []
    for question, steps in ITEMS:
        ex = st(render_prm_input(question, steps, "ки"), [0.5] * len(steps))
        samples.append({"input_ids": ex.input_ids, "tag_positions": ex.tag_positions, "targets": ex.targets})
    path.write_text(json.dumps(samples))
    return samples


def hf_logits(hf_dir, samples):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([s["input_ids"]])).logits[0] for s in samples]


@pytest.mark.parametrize("layout", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_converted_logits_match_hf(converted, tmp_path, layout):
    """Every family at this layout, in one launch."""
    tp, pp = layout
    args, diffs = [], {}
    for name, (hf, ckpt) in converted.items():
        args += ["--ckpt", ckpt, "--samples", tmp_path / f"{name}.json", "--out", tmp_path / f"{name}.pt"]
    for name, (hf, _) in converted.items():
        samples_for(hf, tmp_path / f"{name}.json")
    torchrun(tp * pp, *args, "--tp", tp, "--pp", pp)
    for name, (hf, _) in converted.items():
        samples = json.loads((tmp_path / f"{name}.json").read_text())
        ours = torch.load(tmp_path / f"{name}.pt")["lm_logits"]
        diffs[name] = max((a - b).abs().max().item() for a, b in zip(ours, hf_logits(hf, samples)))
    print(layout, "max |logit diff|", diffs)
    assert all(d < 1e-5 for d in diffs.values()), diffs


@pytest.mark.parametrize("name", list(FAMILIES))
def test_round_trip_is_bit_exact(converted, tmp_path, name):
    from safetensors.torch import load_file

    hf, ckpt = converted[name]
    run([EXPORT, "--ckpt", ckpt, "--out", tmp_path / "hf"])
    a, b = load_file(hf / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert set(a) == set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    meta = json.loads((tmp_path / "hf" / "prm_config.json").read_text())
    assert meta["head"] == "lm_tokens" and meta["step_tag"] == "ки" and meta["hf_class"].endswith("ForCausalLM")


@pytest.mark.parametrize("head", ["lm_tokens", "scalar"])
def test_exported_hf_scores_equal_megatron_scores(converted, tmp_path, head):
    from nemo_erprm.convert.hf_scorer import HFPRMScorer
    from nemo_erprm.model.loss import step_scores

    hf, _ = converted["qwen2_bias"]
    ckpt = tmp_path / "prm"
    run([CONVERT, "--hf-dir", hf, "--out", ckpt, "--head", head])
    samples_for(hf, tmp_path / "s.json")
    torchrun(1, "--ckpt", ckpt, "--samples", tmp_path / "s.json", "--out", tmp_path / "o.pt")
    ours = [step_scores(x, head).tolist() for x in torch.load(tmp_path / "o.pt")["step_logits"]]
    run([EXPORT, "--ckpt", ckpt, "--out", tmp_path / "hf"])
    theirs = HFPRMScorer(str(tmp_path / "hf")).score_batch(ITEMS)  # batched: right padding exercised
    assert [len(x) for x in theirs] == [len(x) for x in ours] == [2, 3]
    diff = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    print(head, "max |score diff| HF vs megatron", diff)
    assert diff < 1e-5
