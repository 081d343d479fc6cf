"""The HTTP reward service on a free loopback port with a tiny PRM: scores equal direct model
calls, OpenRLHF payloads round-trip, bad requests get 4xx naming the field, the bearer token
is enforced (scheme in any case, /metrics included), a bounded load test loses nothing, large
unmatched prompts do not stall other requests, a wrong response marker is refused and a high
fallback rate raised, verl's question-less samples get the service's fallback, and SIGTERM
drains in-flight requests."""

import json
import random
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


def wait_healthy(proc, url, token=None):
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            if call(url, "/health", token=token)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


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
    ({"items": [{"prompt": QUESTION, "response": RESPONSE}] * 9}, None, 413, "items"),
    ({"items": [{"prompt": QUESTION, "steps": "not a list"}]}, None, 422, "items[0].steps"),
    (None, b"{not json", 400, "body"),
    (None, b'{"prompt": "' + b"x" * 30000 + b'"}', 413, "body"),
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
    assert call(server, "/get_reward", {"query": ["q"], "prompts": "p"})[1]["field"] == "prompts"


def test_unscorable_items_get_the_fallback_per_item_and_are_counted(server, direct):
    """Tag inside the text, too long, no steps, no marker, a query not continuing its prompt:
    each item answered with the fallback reward and its reason, the others scored as alone
    (was: one such item made the whole request a 4xx)."""
    before = call(server, "/metrics")[1]["unscorable"]["by_reason"]
    items = [{"prompt": QUESTION, "response": RESPONSE}, {"prompt": QUESTION, "response": "a step ки with the tag"},
             {"prompt": QUESTION, "response": "step " * 1500}, {"prompt": QUESTION, "response": "   "},
             {"prompt": QUESTION, "steps": ["ok step", "bad ки step"]}]
    status, out = call(server, "/score", {"items": items})
    assert status == 200, out
    res = out["results"]
    assert res[0]["unscorable"] is None and res[0]["reward"] == pytest.approx(min(direct(QUESTION, RESPONSE)), abs=1e-6)
    assert [r["unscorable"] for r in res[1:]] == ["step_tag", "too_long", "no_steps", "step_tag"]
    assert all(r["reward"] == 0.0 and r["error"] for r in res[1:])
    assert res[4]["error"].startswith("items[4].steps")
    status, out = call(server, "/get_reward", {"query": [QUESTION + MARKER + RESPONSE, "no marker here", "abc"],
                                               "prompts": None})
    assert status == 200 and out["extra_logs"]["unscorable"] == [0.0, 1.0, 1.0], out
    status, out = call(server, "/get_reward", {"query": ["abc"], "prompts": ["xyz"]})
    assert status == 200 and out["rewards"] == [0.0] and out["extra_logs"]["unscorable"] == [1.0]
    after = call(server, "/metrics")[1]["unscorable"]
    grew = {k: v - before.get(k, 0) for k, v in after["by_reason"].items() if v != before.get(k, 0)}
    assert grew == {"step_tag": 2, "too_long": 1, "no_steps": 1, "no_marker": 2, "prompt_mismatch": 1}
    assert after["fallback_reward"] == 0.0


@pytest.fixture(scope="module")
def open_server(tiny_prm, tmp_path_factory):
    """As OpenRLHF v0.11.0 needs it: no token (its _fetch_rewards_via_http sends no auth
    header), a chat-templated prompt cut to its question by --prompt-regex."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "tools/serve_prm.py", "--scorer", str(tiny_prm), "--port", str(port),
                             "--max-length", "512", "--fallback-reward", "-1", "--prompt-regex", CHATML_QUESTION],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


CHATML_QUESTION = r"<\|im_start\|>user\n(?P<question>.*?)<\|im_end\|>"
CHATML_PROMPT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" + QUESTION + \
    "<|im_end|>\n<|im_start|>assistant\n"


def openrlhf_v0_11_post(url, query, prompt, label):
    """Exactly SingleTurnAgentExecutor._fetch_rewards_via_http (OpenRLHF v0.11.0) with one
    server: one sample per request, aiohttp's json= body, no Authorization header."""
    body = json.dumps({"query": [query], "prompts": [prompt], "labels": [label]}).encode()
    req = urllib.request.Request(url + "/get_reward", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


@pytest.mark.parametrize("case", ["exact", "left_truncated", "retokenized"])
def test_openrlhf_v0_11_single_sample_requests(open_server, direct, case):
    """OpenRLHF decodes prompt+response with skip_special_tokens=False (the end string stays),
    keeps only the last tokens of an over-long prompt, and decode(encode(prompt)) may differ
    from the prompt: all score as the clean (question, response) (was: 400 'does not start
    with its prompt', and the actor's reward None)."""
    query_prompt = {"exact": CHATML_PROMPT, "left_truncated": CHATML_PROMPT[30:],
                    "retokenized": CHATML_PROMPT.replace("Be brief.", "Be  brief .")}[case]
    status, out = openrlhf_v0_11_post(open_server, query_prompt + RESPONSE + "<|im_end|>", CHATML_PROMPT, "7")
    assert status == 200, out
    assert out["rewards"] == out["scores"] and len(out["rewards"]) == 1
    assert out["rewards"][0] == pytest.approx(min(direct(QUESTION, RESPONSE)), abs=1e-6)
    assert out["extra_logs"]["num_steps"] == [2] and out["extra_logs"]["unscorable"] == [0.0]


def test_openrlhf_unrelated_query_gets_the_configured_fallback(open_server):
    status, out = openrlhf_v0_11_post(open_server, "something else entirely", CHATML_PROMPT, "7")
    assert status == 200 and out["rewards"] == [-1.0] and out["extra_logs"]["unscorable"] == [1.0]


def test_bearer_token(server):
    assert call(server, "/score", {"prompt": QUESTION, "response": RESPONSE}, token=None)[0] == 401
    assert call(server, "/score", {"prompt": QUESTION, "response": RESPONSE}, token="wrong")[0] == 401
    assert call(server, "/get_reward", {"query": [QUESTION + RESPONSE], "prompts": [QUESTION]}, token=None)[0] == 401


def test_bearer_scheme_in_any_case_and_metrics_needs_the_token(server):
    """RFC 9110: the auth scheme is case-insensitive (was: "bearer" -> 401); /metrics tells
    request counts and errors, so it needs the token too (was: answered without it); /health
    stays open for probes."""
    body = {"prompt": QUESTION, "response": RESPONSE}
    for scheme in ("Bearer", "bearer", "BEARER"):
        req = urllib.request.Request(server + "/score", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"{scheme} {TOKEN}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and "reward" in json.loads(r.read())
    assert call(server, "/score", body, token=None)[0] == 401
    status, out = call(server, "/metrics", token=None)
    assert status == 401 and out["field"] == "authorization"
    assert call(server, "/metrics", token="wrong")[0] == 401
    assert call(server, "/metrics")[0] == 200 and call(server, "/health", token=None)[0] == 200


def words(n_chars, seed):
    rng = random.Random(seed)
    vocab = ["apples", "the", "baker", "sells", "12", "loaves", "how", "many", "left", "after", "days", "+", "=", "."]
    return " ".join(rng.choice(vocab) for _ in range(n_chars // 3))[:n_chars]


def test_large_unmatched_prompts_do_not_stall_other_requests(server):
    """OpenRLHF queries that do not continue their 6k-character prompts, three at once, then a
    small /score: it is answered in well under what the unbounded prompt matcher spent on
    ONE such query (measured here, same machine, same moment) - was: the matcher ran on the
    event loop, quadratic in the prompt, and every other request waited for it."""
    from difflib import SequenceMatcher

    prompt, query = words(6000, seed=1), words(6100, seed=2)
    start = time.perf_counter()
    SequenceMatcher(None, prompt, query[: len(prompt) + 64], autojunk=False).get_matching_blocks()
    unbounded = time.perf_counter() - start
    big = {}

    def send_big(k):
        big[k] = call(server, "/get_reward", {"query": [query], "prompts": [prompt]})

    threads = [threading.Thread(target=send_big, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the big requests are in
    start = time.perf_counter()
    status, out = call(server, "/score", {"prompt": QUESTION, "response": RESPONSE})
    small = time.perf_counter() - start
    for t in threads:
        t.join(timeout=300)
    assert status == 200 and out["unscorable"] is None
    assert [b[0] for b in big.values()] == [200] * 3
    assert all(b[1]["extra_logs"]["unscorable"] == [1.0] for b in big.values())  # prompt_mismatch: the fallback
    assert small < 0.3 * unbounded, (small, unbounded)


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
    status, m = call(server, "/metrics")
    assert status == 200 and m["requests"] >= n_clients * per_client and m["errors"] == 0
    assert m["mean_batch_size"] > 1.0  # concurrent requests were scored together
    assert m["latency_ms"]["p50"] is not None and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"]


def test_verl_adapter_calls_the_service(server, monkeypatch):
    """As verl b178a3c calls it: get_custom_reward_fn merges reward_kwargs into the keyword
    call, the reward-loop managers add reward_router_address/reward_model_tokenizer (was a
    TypeError), the batch manager calls with plural names; a row of math_dataset.py (no
    question in extra_info) gets the fallback, never an exception."""
    from functools import partial

    from nemo_erprm.serving.verl_reward import add_question, compute_score, compute_score_batch

    monkeypatch.setenv("ERPRM_REWARD_URL", server)
    monkeypatch.setenv("ERPRM_REWARD_TOKEN", TOKEN)
    want = call(server, "/score", {"prompt": QUESTION, "response": RESPONSE})[1]["reward"]
    fn = partial(compute_score, **{"some_reward_kwarg": 1})  # verl's _call_with_kwargs merges them
    score = fn(data_source="openai/gsm8k", solution_str=RESPONSE, ground_truth="7",
               extra_info={"split": "train", "index": 0, "question": QUESTION, "num_turns": None,
                           "rollout_reward_scores": {}}, reward_router_address=None, reward_model_tokenizer=None)
    assert score == pytest.approx(want, abs=1e-6)
    math_row = {"data_source": "DigitalLearningGmbH/MATH-lighteval", "prompt": [{"role": "user", "content": QUESTION}],
                "extra_info": {"split": "train", "index": 3}}
    assert compute_score(data_source="x", solution_str=RESPONSE, ground_truth="7",
                         extra_info=math_row["extra_info"]) == 0.0  # no question: the fallback
    scores = compute_score_batch(data_sources=["a", "b", "c"], solution_strs=[RESPONSE, RESPONSE, "bad ки tag"],
                                 ground_truths=["7"] * 3,
                                 extra_infos=[{"question": QUESTION}, add_question(math_row)["extra_info"],
                                              {"question": QUESTION}], some_reward_kwarg=1)
    assert scores == pytest.approx([want, want, 0.0], abs=1e-6)


def test_verl_sample_without_a_question_gets_the_services_fallback(open_server, monkeypatch):
    """One source for the fallback: a verl sample without a question is answered by the
    service (here --fallback-reward -1), never by a client-side default (was: 0.0, above the
    service's fallback and, with --transform minus_half, above its floor -0.5)."""
    from nemo_erprm.serving.verl_reward import compute_score, compute_score_batch

    monkeypatch.setenv("ERPRM_REWARD_URL", open_server)
    before = call(open_server, "/metrics", token=None)[1]["unscorable"]["by_reason"].get("empty_prompt", 0)
    assert compute_score(data_source="x", solution_str=RESPONSE, ground_truth="7", extra_info={"index": 3}) == -1.0
    scores = compute_score_batch(data_sources=["a", "b"], solution_strs=[RESPONSE, RESPONSE],
                                 extra_infos=[{"index": 1}, {"question": QUESTION}])
    assert scores[0] == -1.0 and scores[1] > -1.0
    after = call(open_server, "/metrics", token=None)[1]["unscorable"]["by_reason"]["empty_prompt"]
    assert after - before == 2  # counted where every other fallback is


@pytest.fixture(scope="module")
def readme_server(tiny_prm, tmp_path_factory):
    """Started by bash from the README's OpenRLHF/NeMo-RL line: a ChatML actor tokenizer and
    the marker in double quotes (bash passes a backslash and an n)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("readme_srv") / "console.log"
    cmd = (f"exec {sys.executable} tools/serve_prm.py --scorer {tiny_prm} --port {port} --actor-tokenizer {tiny_prm} "
           '--response-marker "<|im_start|>assistant\\n" --max-length 512')
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=REPO, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        yield url, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_readme_marker_splits_and_a_wrong_one_is_refused_then_watched(readme_server, tiny_prm):
    """The README's quoting gives the marker the ChatML template really ends with; a first
    batch in which it occurs nowhere is refused (422 naming the marker, an ERROR line) instead
    of answered 0.0 for all; templated queries then score as /score with the raw question;
    a flood of samples without it gets the fallback and raises the alarm in /metrics and on
    the console (was: every reward 0.0, one line per sample the only sign)."""
    import re

    from transformers import AutoTokenizer

    url, log_path = readme_server

    status, out = call(url, "/get_reward", {"query": [QUESTION + "\n" + RESPONSE] * 3}, token=None)
    assert status == 422 and out["field"] == "query", out
    assert "the response marker '<|im_start|>assistant\\n' occurs in none of the 3 samples" in out["error"]
    want = call(url, "/score", {"prompt": QUESTION, "response": RESPONSE}, token=None)[1]["reward"]
    tok = AutoTokenizer.from_pretrained(str(tiny_prm))  # the actor's ChatML template
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    status, out = call(url, "/get_reward", {"query": [prompt + RESPONSE + "<|im_end|>"] * 2}, token=None)
    assert status == 200 and out["rewards"] == pytest.approx([want] * 2, abs=1e-6) and want != 0.0
    flood = {"query": [QUESTION + "\n" + RESPONSE] * 64}
    status, out = call(url, "/get_reward", flood, token=None)
    assert status == 200 and out["rewards"] == [0.0] * 64
    recent = call(url, "/metrics", token=None)[1]["unscorable"]["recent"]
    assert recent["alarm"] and recent["fallback_rate"] > 0.9 and recent["by_reason"] == {"no_marker": 64}, recent
    console = log_path.read_text()
    assert "ERROR query: the response marker '<|im_start|>assistant\\n' occurs in none" in console
    assert re.search(r"WARNING fallback alarm: \d+% of the last \d+ samples got the fallback reward 0.0 instead of a "
                     r"PRM score \(no_marker \d+\)", console), console[-2000:]


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


def test_nemo_rl_environment_step_against_the_service(open_server, direct):
    """PRMRewardEnvironment as NeMo-RL 7ea279a's GRPO calls it (interfaces.py): step(message
    logs as math_hf_data_processor builds them - the chat-templated prompt in the user turn,
    the generation in the assistant turn - , metadata) -> EnvironmentReturn with rewards and
    terminateds of shape [B]; an unscorable sample gets the fallback and is counted in the
    metrics, never failing the step."""
    import torch

    from nemo_erprm.serving.nemo_rl_env import EnvironmentReturn, PRMRewardEnvironment

    env = PRMRewardEnvironment({"url": open_server, "max_items": 2})
    logs = [[{"role": "user", "content": CHATML_PROMPT, "token_ids": torch.tensor([1, 2])},
             {"role": "assistant", "content": r + "<|im_end|>"}]
            for r in (RESPONSE, "3 + 4 = 8.\n#### 8", "a step ки with the tag")]
    meta = [{"ground_truth": "7"}] * 3
    ret = env.step(logs, meta)
    assert isinstance(ret, EnvironmentReturn) and ret._fields == (
        "observations", "metadata", "next_stop_strings", "rewards", "terminateds", "answers")
    assert ret.rewards.shape == (3,) and ret.rewards.dtype == torch.float32 and ret.terminateds.tolist() == [1.0] * 3
    assert ret.rewards[0].item() == pytest.approx(min(direct(QUESTION, RESPONSE)), abs=1e-6)
    assert ret.rewards[1].item() == pytest.approx(min(direct(QUESTION, "3 + 4 = 8.\n#### 8")), abs=1e-6)
    assert ret.rewards[2].item() == -1.0  # the server's --fallback-reward
    assert ret.metadata is meta and ret.next_stop_strings == [None] * 3
    assert all(o["role"] == "environment" for o in ret.observations)
    batch = {"rewards": ret.rewards, "is_end": torch.tensor([1, 1, 0])}
    _, metrics = env.global_post_process_and_metrics(batch)
    assert metrics["prm_unscorable_samples"] == 1 and metrics["fraction_of_samples_properly_ended"] == pytest.approx(2 / 3)
