"""The real transport: `tools/serve_prm.py --protocol aligner` under PyTriton (Triton's own
server binary, CPU), called through `pytriton.client.FuturesModelClient.infer_batch` exactly
as NeMo-Aligner's PPO actor calls its remote reward model, next to `--protocol http`, both in
the serving venv (`make serve-venv`: PyTriton cannot install in the training venv). The
driver is benchmarks/serve_rl_clients.py: rewards [B,1] float32 equal to /score for B = 1, 16,
64 (above --max-batch), then rollout batches and OpenRLHF-style requests with 5% poisoned
samples: no failed batch, poisoned samples counted and given the fallback, the rest unchanged."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nemo_erprm.runtime.parallel import free_port

REPO = Path(__file__).resolve().parents[2]
SERVE_PY = REPO / os.environ.get("ERPRM_SERVE_VENV", ".venv-serve") / "bin" / "python"
MARKER = "\nASSISTANT:\n"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SERVE_PY.exists(), reason=(
    f"no serving venv at {SERVE_PY.parent.parent} (make serve-venv): PyTriton cannot install in the training venv"))]


def _start(args, ready_line, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen([str(SERVE_PY), "tools/serve_prm.py", *args], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(Path(log_path).read_text()[-4000:])
        if ready_line in Path(log_path).read_text():
            return proc
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not start:\n" + Path(log_path).read_text()[-4000:])


def test_aligner_actor_call_and_poisoned_load_through_the_real_clients(tiny_prm, tmp_path):
    common = ["--scorer", str(tiny_prm), "--response-marker", MARKER, "--max-length", "512", "--max-batch", "8",
              "--actor-tokenizer", str(tiny_prm)]
    aligner_port, http_port = free_port(), free_port()
    procs = []
    try:
        procs.append(_start([*common, "--protocol", "aligner", "--port", str(aligner_port)],
                            "as PyTriton model 'reward_model'", tmp_path / "aligner.log"))
        procs.append(_start([*common, "--protocol", "http", "--port", str(http_port)], "serving ",
                            tmp_path / "http.log"))
        out = tmp_path / "summary.json"
        run = subprocess.run([str(SERVE_PY), "benchmarks/serve_rl_clients.py",
                              "--aligner-url", f"http://127.0.0.1:{aligner_port}",
                              "--http-url", f"http://127.0.0.1:{http_port}", "--actor-tokenizer", str(tiny_prm),
                              "--marker", MARKER, "--batch-sizes", "1,16,64", "--rounds", "6",
                              "--rollout-batch", "16", "--http-requests", "60", "--poison", "0.05",
                              "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        summary = json.loads(out.read_text())
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    for b in ("1", "16", "64"):
        eq = summary["equality"][b]
        assert eq["shape"] == [int(b), 1] and eq["dtype"] == "float32" and eq["max_abs_diff"] <= 1e-6, eq
    load = summary["aligner_load"]
    assert load["failed_batches"] == 0 and load["wrong_rewards"] == 0
    http = summary["http_load"]
    assert http["failed"] == 0 and http["wrong"] == 0 and http["ok"] + http["poisoned"] == 60
    assert summary["http_metrics_unscorable"]["total"] >= http["poisoned"]
    if load["poisoned_rows"]:  # each unscorable row is logged with its reason by the aligner server
        assert "unscorable sample (" in (tmp_path / "aligner.log").read_text()
