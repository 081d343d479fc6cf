#!/usr/bin/env python
"""Load test of the HTTP reward service: 32 concurrent clients send 2,000 `/score` requests on
loopback (bounded: it stops by itself), once with dynamic batching (--max-batch 16) and once
with batch size 1, against the same tiny PRM (a 2-layer Llama built here; the figure is the
service's overhead and batching, not a 7B model's speed). Prints throughput, p50/p99 latency,
errors and lost responses, and the batching gain (throughput ratio).

Then the stall check (the batching server): ``--rounds`` interleaved rounds of ``--stall-requests``
small `/score` requests alone, then the same with OpenRLHF `/get_reward` queries mixed in whose
8k-30k-character prompts they do not continue (the prompt matcher's worst case; it was
quadratic and ran on the event loop: ~35 s near the 32k limit, every other request waiting).
Each round gives the small requests' p99 latency ratio (mixed / alone); the median counts (its
min-max range is printed). PASS: no error, no lost response, median ratio <= --max-stall-ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
QUESTION = "A baker makes 12 loaves a day and sells 9. How many are left after 5 days?"


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status if "reward" in json.loads(r.read()) else -1
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -2


def unmatched_query(n_chars: int, seed: int) -> dict:
    """A /get_reward body whose query does not continue its prompt (answered with the fallback)."""
    rng = random.Random(seed)
    vocab = ["apples", "the", "baker", "sells", "12", "loaves", "how", "many", "left", "after", "days", "+", "=", "."]
    text = lambda: " ".join(rng.choice(vocab) for _ in range(n_chars // 3))[:n_chars]  # noqa: E731
    return {"query": [text()], "prompts": [text()]}


def post_json(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -2


def run_mixed(url: str, clients: int, requests: int, side_clients: int = 2) -> dict:
    """``run_load`` with ``side_clients`` threads sending unmatched long-prompt queries meanwhile."""
    done = threading.Event()
    side: list[int] = []

    def pathological(k: int):
        n = 0
        while not done.is_set():
            side.append(post_json(url + "/get_reward", unmatched_query((8000, 16000, 30000)[n % 3], seed=k * 1000 + n)))
            n += 1

    threads = [threading.Thread(target=pathological, args=(k,)) for k in range(side_clients)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the long prompts are in flight before the small requests start
    try:
        out = run_load(url, clients, requests)
    finally:
        done.set()
        for t in threads:
            t.join()
    out["side_requests"], out["side_errors"] = len(side), sum(1 for st in side if st != 200)
    return out


def run_load(url: str, clients: int, requests: int) -> dict:
    latencies, statuses = [], []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = {"prompt": QUESTION, "response": f"Each day {12 - 9} = 3 are left ({i}).\nOver 5 days 3 * 5 = 15.\n#### 15"}
            t = time.perf_counter()
            status = post(url + "/score", body)
            with lock:
                latencies.append((time.perf_counter() - t) * 1000)
                statuses.append(status)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    return {"seconds": elapsed, "throughput": len(statuses) / elapsed, "ok": statuses.count(200),
            "errors": sum(1 for s in statuses if s != 200), "lost": requests - len(statuses),
            "p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "mean": statistics.mean(lat)}


def serve(prm: Path, max_batch: int, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "serve_prm.py"), "--scorer", str(prm), "--port",
                             str(port), "--max-batch", str(max_batch), "--max-wait-ms", "5", "--queue-size", "4096"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read())
            time.sleep(0.2)
    raise SystemExit("server did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3, help="interleaved stall-check rounds (alone, mixed); median ratio")
    p.add_argument("--stall-requests", type=int, default=200, help="small requests per stall-check side")
    p.add_argument("--max-stall-ratio", type=float, default=5.0, help="PASS bound on the median p99 ratio")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")

    from transformers import AutoTokenizer

    from nemo_erprm.runtime.parallel import free_port
    from tests.tiny_models import build_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        prm = build_tiny_llama(Path(tmp) / "tiny_prm")
        tok = AutoTokenizer.from_pretrained(str(prm))
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in (("step_tag_id", "ки"), ("plus_token_id", "+"),
                                                             ("minus_token_id", "-"))}
        (prm / "prm_config.json").write_text(json.dumps({"head": "lm_tokens", "step_tag": "ки", **ids}))
        results, stall = {}, []
        for max_batch in (16, 1):
            port = free_port()
            proc = serve(prm, max_batch, port)
            url = f"http://127.0.0.1:{port}"
            try:
                run_load(url, args.clients, 64)  # warm-up
                results[max_batch] = run_load(url, args.clients, args.requests)
                with urllib.request.urlopen(f"{url}/metrics") as r:
                    results[max_batch]["mean_batch"] = json.loads(r.read())["mean_batch_size"]
                if max_batch == 16:
                    for _ in range(args.rounds):  # alone, then mixed: a busy machine slows both alike
                        alone = run_load(url, args.clients, args.stall_requests)
                        stall.append((alone, run_mixed(url, args.clients, args.stall_requests)))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    for max_batch, r in results.items():
        print(f"max batch {max_batch:2d}: {r['throughput']:7.1f} req/s, p50 {r['p50']:7.1f} ms, p99 {r['p99']:7.1f} ms, "
              f"mean batch {r['mean_batch']}, {r['ok']} ok, {r['errors']} errors, {r['lost']} lost "
              f"({args.requests} requests, {args.clients} clients)")
    gain = results[16]["throughput"] / results[1]["throughput"]
    ok = all(r["errors"] == 0 and r["lost"] == 0 for r in results.values())
    print(f"batching gain (throughput, max batch 16 vs 1): {gain:.2f}x; {'PASS' if ok and gain > 1 else 'FAIL'}")
    ratios = [mixed["p99"] / alone["p99"] for alone, mixed in stall]
    ratio = statistics.median(ratios)
    stall_ok = all(r["errors"] == 0 and r["lost"] == 0 and r.get("side_errors", 0) == 0 for pair in stall for r in pair)
    for k, (alone, mixed) in enumerate(stall):
        print(f"stall round {k + 1}: small /score p50/p99 {alone['p50']:.1f}/{alone['p99']:.1f} ms alone, "
              f"{mixed['p50']:.1f}/{mixed['p99']:.1f} ms with {mixed['side_requests']} unmatched 8k-30k-character "
              f"prompts mixed in ({mixed['side_errors']} errors)")
    verdict = stall_ok and ratio <= args.max_stall_ratio
    print(f"stall ratio (small-request p99, mixed vs alone): median {ratio:.2f}x (range {min(ratios):.2f}-"
          f"{max(ratios):.2f}, {args.rounds} interleaved rounds); {'PASS' if verdict else 'FAIL'}")
    return 0 if ok and gain > 1 and verdict else 1


if __name__ == "__main__":
    sys.exit(main())
