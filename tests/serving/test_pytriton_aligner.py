"""The real transport: `tools/serve_prm.py --protocol aligner` under PyTriton (Triton's own
server binary, CPU), called through `pytriton.client.FuturesModelClient.infer_batch` exactly
as NeMo-Aligner's PPO actor calls its remote reward model (NeMo-Aligner af2b3bd,
`reward_critic_clients.py` + `http_communicator.py`), next to `--protocol http`, both in the
serving venv (`make serve-venv`: PyTriton cannot install in the training venv).

Both servers are started by bash from the command line the README gives: `--actor-tokenizer`
with a chat template and `--response-marker "<...>assistant\\n"` in double quotes, which bash
passes as a backslash and an `n` (was: a marker that occurs in no text, every reward the
fallback 0.0). The actor's rollouts are its chat template around the question plus the
response and its eos. The driver is benchmarks/serve_rl_clients.py:

- a first batch without the marker is refused with an error naming it (was: answered 0.0);
- rewards [B,1] float32 equal `/score` with the raw question within 1e-6 for B = 1, 16, 64
  (above --max-batch), and so do `/get_reward` with and without `prompts` (was: 0.0921 /
  0.0736 vs 0.2032: the question stayed wrapped in the template once the prompt was cut at
  the marker);
- rollout batches and OpenRLHF-style requests with 5% poisoned samples: no failed batch,
  poisoned samples counted and given the fallback, the rest unchanged;
- a flood of rows without the marker (after the marker was seen) gets the fallback and raises
  the fallback-rate WARNING in the server log (its default window, 256 samples);
- Triton's own start-up lines go to its log file, not the console.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nemo_erprm.runtime.parallel import free_port

REPO = Path(__file__).resolve().parents[2]
SERVE_PY = REPO / os.environ.get("ERPRM_SERVE_VENV", ".venv-serve") / "bin" / "python"
# (chat template, the marker as the README writes it inside bash double quotes)
ACTORS = {"chatml": (None, r"<|im_start|>assistant\n"),
          "nemo": ("<extra_id_0>System\n\n{% for m in messages %}<extra_id_1>User\n{{ m['content'] }}\n{% endfor %}"
                   "{% if add_generation_prompt %}<extra_id_1>Assistant\n{% endif %}", r"<extra_id_1>Assistant\n")}
TRITON_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SERVE_PY.exists(), reason=(
    f"no serving venv at {SERVE_PY.parent.parent} (make serve-venv): PyTriton cannot install in the training venv"))]


def _start_as_the_readme_does(args: str, log_path: Path, tmp_path: Path) -> subprocess.Popen:
    """bash runs the command line: the marker's quoting is bash's, as a user's is."""
    return subprocess.Popen(["bash", "-c", f"exec {shlex.quote(str(SERVE_PY))} tools/serve_prm.py {args}"], cwd=REPO,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})


def _wait_ready(proc: subprocess.Popen, ready_line: str, log_path: Path) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text()[-4000:])
        if ready_line in log_path.read_text():
            return
        time.sleep(0.3)
    raise AssertionError("server did not start:\n" + log_path.read_text()[-4000:])


@pytest.mark.parametrize("actor_kind", sorted(ACTORS))
def test_aligner_actor_call_and_poisoned_load_through_the_real_clients(tiny_prm, tmp_path, actor_kind):
    template, readme_marker = ACTORS[actor_kind]
    actor = tiny_prm
    if template is not None:  # the actor's own tokenizer with a NeMo-style chat template
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tiny_prm))
        tok.chat_template = template
        actor = tmp_path / "actor"
        tok.save_pretrained(str(actor))
    marker = readme_marker.replace("\\n", "\n")  # what the actor's template really ends with
    common = (f"--scorer {shlex.quote(str(tiny_prm))} --actor-tokenizer {shlex.quote(str(actor))} "
              f'--response-marker "{readme_marker}" --max-length 512 --max-batch 8')
    aligner_port, http_port = free_port(), free_port()
    procs = []
    try:
        procs.append(_start_as_the_readme_does(f"{common} --protocol aligner --port {aligner_port}",
                                               tmp_path / "aligner.log", tmp_path))
        procs.append(_start_as_the_readme_does(f"{common} --protocol http --port {http_port}", tmp_path / "http.log",
                                               tmp_path))
        _wait_ready(procs[0], "as PyTriton model 'reward_model'", tmp_path / "aligner.log")
        _wait_ready(procs[1], "serving ", tmp_path / "http.log")
        out = tmp_path / "summary.json"
        run = subprocess.run([str(SERVE_PY), "benchmarks/serve_rl_clients.py",
                              "--aligner-url", f"http://127.0.0.1:{aligner_port}",
                              "--http-url", f"http://127.0.0.1:{http_port}", "--actor-tokenizer", str(actor),
                              "--marker", marker, "--chat-template", "--refusal-check", "--batch-sizes", "1,16,64",
                              "--rounds", "4", "--rollout-batch", "16", "--http-requests", "40", "--poison", "0.05",
                              "--flood", "256", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
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
    assert summary["refusal"]["refused"] and repr(marker) in summary["refusal"]["error"], summary["refusal"]
    for b in ("1", "16", "64"):
        eq = summary["equality"][b]
        assert eq["shape"] == [int(b), 1] and eq["dtype"] == "float32" and eq["max_abs_diff"] <= 1e-6, eq
        assert max(eq["http_max_abs_diff"].values()) <= 1e-6, eq
    load = summary["aligner_load"]
    assert load["failed_batches"] == 0 and load["wrong_rewards"] == 0
    http = summary["http_load"]
    assert http["failed"] == 0 and http["wrong"] == 0 and http["ok"] + http["poisoned"] == 40
    assert summary["http_metrics_unscorable"]["total"] >= http["poisoned"]
    assert summary["flood"] == {"rows": 256, "fallback_rows": 256}
    console = (tmp_path / "aligner.log").read_text()
    assert "unscorable sample (no_marker)" in console  # each fallback is logged with its reason
    assert re.search(r"WARNING fallback alarm: \d+% of the last \d+ samples got the fallback reward 0.0", console), \
        console[-3000:]
    # Triton's own log (~50 lines, a CUDA error on a CPU machine) is in its file, not on the console
    before_ready = console[: console.index("as PyTriton model 'reward_model'")]
    assert not [line for line in before_ready.splitlines() if TRITON_LINE.match(line)], before_ready[-2000:]
    triton_log = re.search(r"Triton's log: (\S+)\)", console).group(1)
    assert any(TRITON_LINE.match(line) for line in Path(triton_log).read_text().splitlines())
