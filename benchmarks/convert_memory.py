#!/usr/bin/env python
"""Peak memory (PSS) of HF -> PRM conversion vs the model's fp32 size (target: < 2x).

Two fp32 HF directories are written first (not measured): the embedded SmolLM2-135M (538 MB)
and a randomly initialised Llama of ~400M parameters (1.6 GB) with SmolLM2's tokenizer.
`tools/convert_hf_checkpoint.py` converts each in a child process whose proportional set
size (with its children: checkpoint writers share pages with their parent, so summing RSS
would count them twice) is sampled every 20 ms. Also measured in the same run: a process
that only imports the conversion stack (torch, transformers, NeMo, megatron), a fixed cost
independent of the model, printed separately.

Pass: for every model, the memory the conversion adds above that fixed cost is < 2x the
model's fp32 size, and the absolute peak is < 2x for the 1.6 GB model. (For a 135M model the
fixed cost alone is 1.4x its fp32 size, so its absolute ratio is printed, not judged.)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_pss(cmd: list[str]) -> tuple[int, int]:
    """Peak proportional set size of a command and its children (forked checkpoint writers
    share pages with their parent: summing RSS would count those pages twice)."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            pss = ps.memory_full_info().pss + sum(c.memory_full_info().pss for c in ps.children(recursive=True))
            peak = max(peak, pss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr.read()[-3000:]}")
    return peak, proc.returncode


def write_models(tmp: Path) -> list[tuple[str, Path, int]]:
    """(name, fp32 HF directory, fp32 bytes) for the models measured."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from nemo_erprm.embedded import resolve_model_path

    where, gguf = resolve_model_path("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    out = []
    smol = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, dtype=torch.float32)
    big_cfg = LlamaConfig(vocab_size=smol.config.vocab_size, hidden_size=1024, intermediate_size=4096,
                          num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4,
                          max_position_embeddings=2048, tie_word_embeddings=False, dtype="float32")
    for name, build in (("SmolLM2-135M", lambda: smol), ("random Llama-400M", lambda: LlamaForCausalLM(big_cfg))):
        model = build()
        path = tmp / name.replace(" ", "_")
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        out.append((name, path, sum(p.numel() for p in model.parameters()) * 4))
        del model
    del smol
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        models = write_models(Path(tmp))
        imports, _ = peak_pss([sys.executable, "-c",
                               "import nemo_erprm.runtime.cpu_backend as c; c.enable_cpu_backend(); "
                               "import transformers, nemo.collections.llm, nemo_erprm.convert.hf_to_prm"])
        gb = 1e9
        print(f"import-only baseline (fixed cost): {imports / gb:.2f} GB")
        ok = True
        for name, hf, fp32_bytes in models:
            peak, _ = peak_pss([sys.executable, str(REPO / "tools" / "convert_hf_checkpoint.py"), "--hf-dir", str(hf),
                                "--out", str(Path(tmp) / f"prm_{hf.name}"), "--step-tag", "§"])
            added = (peak - imports) / fp32_bytes
            absolute = peak / fp32_bytes
            judged = fp32_bytes > 1e9
            ok &= added < 2.0 and (absolute < 2.0 or not judged)
            print(f"{name}: fp32 {fp32_bytes / gb:.2f} GB, peak PSS {peak / gb:.2f} GB -> "
                  f"{absolute:.2f}x absolute{'' if judged else ' (not judged)'}, "
                  f"{added:.2f}x above the fixed cost (target < 2x)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
