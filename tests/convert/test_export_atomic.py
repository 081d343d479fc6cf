"""HF export: an existing folder is refused unless --overwrite, replaced only when the new one is
complete (SIGKILL at several points leaves the old folder whole and loadable), normal file
modes, and a tokenizer read from GGUF exported as plain HF files (fast and slow, same ids)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_hf

REPO = Path(__file__).resolve().parents[2]
CONVERT = REPO / "tools" / "convert_hf_checkpoint.py"
EXPORT = REPO / "tools" / "export_hf_checkpoint.py"
ITEMS = [("What is 2+3?", ["2 plus 3 is 5.", "#### 5"]), ("Tom has 3 apples and buys 4 more.", ["3 + 4 = 7", "#### 7"])]

pytestmark = pytest.mark.slow


def tool(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("export_atomic")
    hf = build_tiny_hf(root / "hf", "llama")
    proc = tool(CONVERT, "--hf-dir", hf, "--out", root / "prm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "prm"


def scores(folder):
    from nemo_erprm.convert.hf_scorer import HFPRMScorer

    return HFPRMScorer(str(folder), device="cpu").score_batch(ITEMS)


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def kill_export_at(ckpt, out, marker: str, delay: float) -> str:
    """Start an --overwrite export, SIGKILL it ``delay`` s after the line starting with ``marker``."""
    proc = subprocess.Popen([sys.executable, "-u", str(EXPORT), "--ckpt", str(ckpt), "--out", str(out), "--overwrite"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(marker):
            time.sleep(delay)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "".join(seen) + proc.stdout.read()


def test_existing_folder_refused_then_replaced_atomically(ckpt, tmp_path):
    out = tmp_path / "hf_export"
    proc = tool(EXPORT, "--ckpt", ckpt, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("[1/4] loading", "[2/4] mapping", "[3/4] writing weights", "[4/4] writing the tokenizer"):
        assert line in proc.stdout  # progress
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes.values()) == {0o644 & ~current_umask()}, modes
    (out / "old_export_marker.txt").write_text("the previous export")
    before, old_scores = snapshot(out), scores(out)

    started = time.time()
    proc = tool(EXPORT, "--ckpt", ckpt, "--out", out)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --out {out}: already exists and is not empty; choose another --out or pass --overwrite"]
    assert time.time() - started < 10  # refused before NeMo loads
    assert snapshot(out) == before

    kept_old = 0
    for marker, delay in (("[1/4]", 0.0), ("[3/4]", 0.0), ("[4/4]", 0.0), ("[4/4]", 0.5), ("[4/4]", 1.5)):
        printed = kill_export_at(ckpt, out, marker, delay)
        assert marker in printed
        if "HF PRM written" in printed:  # finished before the kill: the whole new folder
            assert not (out / "old_export_marker.txt").exists() and scores(out) == old_scores
            (out / "old_export_marker.txt").write_text("the previous export")
            before = snapshot(out)
        else:
            assert snapshot(out) == before, f"killed {delay}s after {marker}: the old folder changed"
            kept_old += 1
    assert kept_old >= 3
    assert scores(out) == old_scores

    proc = tool(EXPORT, "--ckpt", ckpt, "--out", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "old_export_marker.txt").exists()
    assert scores(out) == old_scores
    assert not list(tmp_path.glob(".hf_export.tmp-*")), "temporary folders of killed exports are cleaned up"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_gguf_tokenizer_exported_as_plain_hf_files(tmp_path, shared_data):
    """SmolLM2 from GGUF: no GGUF file under the sentencepiece name; fast and slow load with the
    training tokenizer's ids (with the step tag added as a special token, as the demo does)."""
    from transformers import AutoTokenizer

    from nemo_erprm.convert.prm_to_hf import save_clean_tokenizer
    from nemo_erprm.data.tokenize import add_step_tag_token
    from nemo_erprm.embedded import load_tokenizer

    tok = load_tokenizer("smollm2")
    add_step_tag_token(tok, "ки")
    assert save_clean_tokenizer(tok, tmp_path) == "GPT2Tokenizer"
    assert not (tmp_path / "tokenizer.model").exists()
    fast = AutoTokenizer.from_pretrained(tmp_path)
    slow = AutoTokenizer.from_pretrained(tmp_path, use_fast=False)
    assert fast.is_fast and not slow.is_fast
    texts = []
    with (shared_data / "gsm8k" / "train.jsonl").open() as f:
        for _, line in zip(range(100), f):
            row = json.loads(line)
            texts.append(row["question"] + " ки\n" + row["answer"].replace("\n", " ки\n") + " ки")
    want = [tok(t)["input_ids"] for t in texts]
    assert [fast(t)["input_ids"] for t in texts] == want
    assert [slow(t)["input_ids"] for t in texts] == want
    assert fast.decode(fast("12.5 apples ки")["input_ids"], skip_special_tokens=False).endswith("12.5 apples ки")
