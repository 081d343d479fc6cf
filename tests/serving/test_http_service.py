"""The HTTP reward service on a free loopback port with a tiny PRM: scores equal direct model
calls, OpenRLHF payloads round-trip, bad requests get 4xx naming the field, the bearer token
is enforced, a bounded load test loses nothing, and SIGTERM drains in-flight requests."""

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nemo_erprm.runtime.parallel import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
MARKER = "\nASSISTANT:\n"
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
RESPONSE = "Tom starts with 3 apples.\nHe buys 4 more, so 3 + 4 = 7.\n#### 7"


def call(url, path, body=None, token=TOKEN, raw=None, method=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_server(tiny_prm, tmp_path, *extra):
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "tools/serve_prm.py", "--scorer", str(tiny_prm), "--port", str(port),
                             "--token-file", str(token_file), "--response-marker", MARKER, "--max-items", "8",
                             "--max-body-bytes", "20000", "--max-length", "512", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            if call(url, "/health")[0] == 200:
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


@pytest.fixture(scope="module")
def server(tiny_prm, tmp_path_factory):
    proc, url = start_server(tiny_prm, tmp_path_factory.mktemp("srv"))
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def direct(tiny_prm):
    from nemo_erprm.convert.hf_scorer import HFPRMScorer
    from nemo_erprm.labeling.segmentation import SegmentationConfig, split_steps

    scorer = HFPRMScorer(str(tiny_prm))
    return lambda q, r: scorer.score(q, split_steps(r, SegmentationConfig()))


def test_score_equals_direct_model_call(server, direct):
    status, out = call(server, "/score", {"prompt": QUESTION, "response": RESPONSE})
    assert status == 200, out
    want = direct(QUESTION, RESPONSE)
    assert len(out["step_scores"]) == len(out["steps"]) == len(want) == 2  # "#### 7" joins its step
    assert max(abs(a - b) for a, b in zip(out["step_scores"], want)) < 1e-6
    assert out["reward"] == pytest.approx(min(want), abs=1e-6)
    status, batch = call(server, "/score", {"items": [{"prompt": QUESTION, "response": RESPONSE},
                                                      {"prompt": QUESTION, "steps": out["steps"][:2]}]})
    assert status == 200 and batch["results"][0]["reward"] == pytest.approx(out["reward"], abs=1e-6)
    assert batch["results"][1]["step_scores"] == pytest.approx(out["step_scores"][:2], abs=1e-6)


def test_openrlhf_payload_round_trips(server, direct):
    responses = [RESPONSE, "3 + 4 = 8.\n#### 8"]
    body = {"query": [QUESTION + r for r in responses], "prompts": [QUESTION] * 2, "labels": ["7", "7"]}
    status, out = call(server, "/get_reward", body)
    assert status == 200, out
    assert set(out) == {"rewards", "scores", "extra_logs"} and len(out["rewards"]) == 2
    for r, resp in zip(out["rewards"], responses):
        assert r == pytest.approx(min(direct(QUESTION, resp)), abs=1e-6)
    # without prompts: the server splits each query at its response marker
    status, out2 = call(server, "/get_reward", {"query": [QUESTION + MARKER + r for r in responses]})
    assert status == 200 and out2["rewards"] == pytest.approx(out["rewards"], abs=1e-6)


@pytest.mark.parametrize("body,raw,status,field", [
    ({"response": RESPONSE}, None, 422, "prompt"),
    ({"prompt": QUESTION, "response": 5}, None, 422, "response"),
    ({"prompt": QUESTION, "response": "a step ки with the tag"}, None, 422, "response"),
    ({"items": [{"prompt": QUESTION, "response": RESPONSE}] * 9}, None, 413, "items"),
    ({"items": [{"prompt": QUESTION, "steps": "not a list"}]}, None, 422, "items[0].steps"),
    (None, b"{not json", 400, "body"),
    (None, b'{"prompt": "' + b"x" * 30000 + b'"}', 413, "body"),
    ({"prompt": QUESTION, "response": "step " * 1500}, None, 413, "response"),
])
def test_bad_requests_get_4xx_naming_the_field(server, body, raw, status, field):
    got, out = call(server, "/score", body, raw=raw)
    assert got == status and out["field"] == field, out
    assert call(server, "/health")[0] == 200  # still serving


def test_lone_surrogate_is_a_400_naming_the_field(server):
    raw = b'{"items": [{"prompt": "q", "response": "bad \\ud800 text"}]}'
    got, out = call(server, "/score", None, raw=raw)
    assert got == 400 and out["field"] == "items[0].response" and "surrogate" in out["error"], out


def test_metrics_count_refused_requests(server):
    before = call(server, "/metrics")[1]["http"]
    assert call(server, "/score", {"response": RESPONSE})[0] == 422
    assert call(server, "/score", {"prompt": QUESTION, "response": RESPONSE}, token="wrong")[0] == 401
    assert call(server, "/score", {"prompt": QUESTION, "response": RESPONSE})[0] == 200
    after = call(server, "/metrics")[1]["http"]
    assert after["client_errors"] - before["client_errors"] == 2
    assert after["by_status"]["401"] - before["by_status"].get("401", 0) == 1
    assert after["ok"] - before["ok"] == 2  # the first /metrics call and the scored request


def test_one_log_line_per_request_and_a_warning_when_exposed_without_token(tiny_prm):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "tools/serve_prm.py", "--scorer", str(tiny_prm), "--port", str(port),
                             "--host", "0.0.0.0", "--max-length", "512"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if call(url, "/health", token=None)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert call(url, "/score", {"prompt": QUESTION, "response": RESPONSE}, token=None)[0] == 200
        assert call(url, "/score", {"prompt": QUESTION}, token=None)[0] == 422
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert f"warning: --host 0.0.0.0 without --token-file: anyone who can reach this machine on port {port}" in output
    assert output.count("POST /score 200 ") == 1 and output.count("POST /score 422 ") == 1, output


def test_openrlhf_bad_payloads(server):
    assert call(server, "/get_reward", {"query": "not a list"})[1]["field"] == "query"
    got, out = call(server, "/get_reward", {"query": ["abc"], "prompts": ["xyz"]})
    assert got == 422 and out["field"] == "query[0]"
    got, out = call(server, "/get_reward", {"query": ["no marker here"]})
    assert got == 422 and "marker" in out["error"]


def test_bearer_token(server):
    assert call(server, "/score", {"prompt": QUESTION, "response": RESPONSE}, token=None)[0] == 401
    assert call(server, "/score", {"prompt": QUESTION, "response": RESPONSE}, token="wrong")[0] == 401
    assert call(server, "/get_reward", {"query": [QUESTION + RESPONSE], "prompts": [QUESTION]}, token=None)[0] == 401


def test_bounded_load_loses_nothing_and_batches(server):
    n_clients, per_client = 16, 25
    results, errors = [], []

    def client(i):
        for j in range(per_client):
            resp = f"Step one for {i}-{j}: 3 + 4 = 7.\n#### 7"
            status, out = call(server, "/score", {"prompt": QUESTION, "response": resp})
            (results if status == 200 and "reward" in out else errors).append((i, j, status))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == n_clients * per_client
    status, m = call(server, "/metrics", token=None)
    assert status == 200 and m["requests"] >= n_clients * per_client and m["errors"] == 0
    assert m["mean_batch_size"] > 1.0  # concurrent requests were scored together
    assert m["latency_ms"]["p50"] is not None and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"]


def test_verl_adapter_calls_the_service(server, monkeypatch):
    from nemo_erprm.serving.verl_reward import compute_score

    monkeypatch.setenv("ERPRM_REWARD_URL", server)
    monkeypatch.setenv("ERPRM_REWARD_TOKEN", TOKEN)
    score = compute_score("gsm8k", RESPONSE, "7", {"question": QUESTION})
    assert score == pytest.approx(call(server, "/score", {"prompt": QUESTION, "response": RESPONSE})[1]["reward"])
    with pytest.raises(ValueError, match="question"):
        compute_score("gsm8k", RESPONSE, "7", {})


def test_sigterm_drains_in_flight_requests(tiny_prm, tmp_path):
    proc, url = start_server(tiny_prm, tmp_path, "--max-wait-ms", "200", "--max-batch", "2")
    results = []

    def client(i):
        results.append(call(url, "/score", {"prompt": QUESTION, "response": f"{RESPONSE}\n({i})"})[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # requests accepted and queued
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    # uvicorn re-raises the signal once it has shut down gracefully
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert results == [200] * 8  # every request accepted before the signal was answered
