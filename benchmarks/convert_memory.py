#!/usr/bin/env python
"""Peak memory (PSS) of HF -> PRM conversion vs the model's fp32 size (target: < 2x).

The embedded SmolLM2-135M (538 MB in fp32) is first written as an fp32 HF directory (not
measured), then `tools/convert_hf_checkpoint.py` converts it in a child process whose RSS
(proportional set size, with its children: checkpoint writers) is sampled every 20 ms. Also measured in the
same run: the RSS of a process that only imports the conversion stack (torch, transformers,
NeMo, megatron) — the fixed cost any conversion pays, printed separately.
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


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_erprm.embedded import resolve_model_path

    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "smollm2_fp32"
        where, gguf = resolve_model_path("smollm2")
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, dtype=torch.float32)
        fp32_bytes = sum(p.numel() for p in model.parameters()) * 4
        model.save_pretrained(hf, safe_serialization=True)
        AutoTokenizer.from_pretrained(where, gguf_file=gguf).save_pretrained(hf)
        del model
        imports, _ = peak_pss([sys.executable, "-c",
                               "import nemo_erprm.runtime.cpu_backend as c; c.enable_cpu_backend(); "
                               "import transformers, nemo.collections.llm, nemo_erprm.convert.hf_to_prm"])
        peak, _ = peak_pss([sys.executable, str(REPO / "tools" / "convert_hf_checkpoint.py"), "--hf-dir", str(hf),
                            "--out", str(Path(tmp) / "prm"), "--step-tag", "§"])
    gb = 1e9
    print(f"model fp32 size:                   {fp32_bytes / gb:6.2f} GB (SmolLM2-135M)")
    print(f"conversion peak PSS (with children): {peak / gb:6.2f} GB")
    print(f"  of which the import-only baseline: {imports / gb:6.2f} GB")
    ratio = peak / fp32_bytes
    print(f"peak PSS / fp32 size: {ratio:.2f}x (target < 2x); above the import baseline: "
          f"{(peak - imports) / fp32_bytes:.2f}x")
    ok = ratio < 2.0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
