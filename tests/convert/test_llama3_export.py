"""A Llama-3.1/3.2 PRM (RoPE scaling of type ``llama3``) converts and exports: HF -> PRM -> HF
on a tiny Llama whose config.json carries a llama3 ``rope_scaling`` with non-default factors.
The PRM computes the original's logits (the scaling reached megatron's RoPE), the export
writes the same ``rope_scaling`` and bit-equal weights, and the exported model's step scores
(transformers, :class:`HFPRMScorer`) equal the megatron PRM's.

What ``conf/erprm_llama3_8b.yaml`` (``export.hf: true``) and the sweep's scoring jobs do at the
end of a Llama-3.x run; transformers 4.57 reads the exported folder."""

from __future__ import annotations

import json

import pytest
import torch

from tests.convert.test_conversion import CONVERT, EXPORT, ITEMS, hf_logits, run, samples_for, torchrun
from tests.tiny_models import build_tiny_hf

pytestmark = pytest.mark.slow

# original_max_position_embeddings 64 (Llama-3.1: 8192) puts the tiny model's RoPE wavelengths
# (6 to 20,000 tokens at head size 16) on all three sides of the llama3 rule: kept, smoothed, divided
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
        "original_max_position_embeddings": 64}


def tiny_llama31(path):
    """The tiny Llama with a llama3 rope_scaling in its config.json (weights do not depend on it)."""
    build_tiny_hf(path, "llama")
    config = json.loads((path / "config.json").read_text())
    config["rope_scaling"] = ROPE
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def test_llama3_rope_scaling_survives_convert_and_export(tmp_path, shared_data):
    from safetensors.torch import load_file

    from nemo_erprm.convert.hf_scorer import HFPRMScorer
    from nemo_erprm.model.loss import step_scores

    hf = tiny_llama31(tmp_path / "hf")
    ckpt, out = tmp_path / "prm", tmp_path / "hf_out"
    run([CONVERT, "--hf-dir", hf, "--out", ckpt])
    assert json.loads((ckpt / "prm_config.json").read_text())["family"] == "ERPRMLlama31Config"

    samples = samples_for(hf, tmp_path / "s.json")
    torchrun(1, "--ckpt", ckpt, "--samples", tmp_path / "s.json", "--out", tmp_path / "o.pt")
    megatron = torch.load(tmp_path / "o.pt")
    scaled = hf_logits(hf, samples)
    diff = max((a - b).abs().max().item() for a, b in zip(megatron["lm_logits"], scaled))
    assert diff < 1e-5, f"the PRM's logits differ from the HF original's by {diff}"
    unscaled_dir = tmp_path / "hf_unscaled"  # the control: without the scaling the logits differ
    build_tiny_hf(unscaled_dir, "llama")
    unscaled = hf_logits(unscaled_dir, samples)
    assert max((a - b).abs().max().item() for a, b in zip(scaled, unscaled)) > 1e-3

    run([EXPORT, "--ckpt", ckpt, "--out", out])
    written = json.loads((out / "config.json").read_text())["rope_scaling"]
    assert {k: written[k] for k in ROPE} == ROPE
    a, b = load_file(hf / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(a) == set(b) and [k for k in a if not torch.equal(a[k], b[k])] == []

    ours = [step_scores(x, "lm_tokens").tolist() for x in megatron["step_logits"]]
    theirs = HFPRMScorer(str(out)).score_batch(ITEMS)
    assert [len(x) for x in theirs] == [len(x) for x in ours] == [2, 3]
    diff = max(abs(p - q) for x, y in zip(ours, theirs) for p, q in zip(x, y))
    assert diff < 1e-5, f"HF step scores differ from the megatron PRM's by {diff}"
