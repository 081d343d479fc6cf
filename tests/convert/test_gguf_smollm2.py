"""The embedded SmolLM2-135M-Instruct (GGUF) converts on CPU; logits match transformers' (1e-4)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_erprm.runtime.parallel import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("convert_worker.py")
TAG = "§"  # a single token of SmolLM2's tokenizer (suggest_step_tags); "ки" would need --add-step-tag-token

pytestmark = pytest.mark.slow


def test_smollm2_gguf_converts_with_matching_logits(tmp_path, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_erprm.data.tokenize import StepTokenizer
    from nemo_erprm.embedded import resolve_model_path
    from nemo_erprm.labeling.segmentation import render_prm_input

    ckpt = tmp_path / "prm"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_hf_checkpoint.py"), "--hf-dir", "smollm2",
                           "--out", str(ckpt), "--step-tag", TAG, "--dtype", "float32"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((ckpt / "prm_config.json").read_text())
    assert meta["architecture"] == "LlamaForCausalLM" and meta["step_tag"] == TAG
    assert meta["source"] == "smollm2"

    where, gguf = resolve_model_path("smollm2")
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    text = render_prm_input("Natalia sold 48 clips in April and half as many in May. How many in total?",
                            ["In May she sold 48/2 = 24 clips.", "In total 48+24 = 72 clips.", "#### 72"], TAG)
    ex = StepTokenizer(tok, TAG, 64)(text, [1.0, 1.0, 1.0])
    (tmp_path / "s.json").write_text(json.dumps([{"input_ids": ex.input_ids, "tag_positions": ex.tag_positions,
                                                  "targets": ex.targets}]))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                          "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), "--ckpt", str(ckpt),
                          "--samples", str(tmp_path / "s.json"), "--out", str(tmp_path / "o.pt")],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = torch.load(tmp_path / "o.pt")["lm_logits"][0]
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ex.input_ids])).logits[0]
    diff = (ours - ref).abs().max().item()
    print("SmolLM2 GGUF max |logit diff|", diff, "top-1 agreement",
          (ours.argmax(-1) == ref.argmax(-1)).float().mean().item())
    assert diff < 1e-4
