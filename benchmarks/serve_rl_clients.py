#!/usr/bin/env python
"""Drive running reward servers through the real RL clients, with poisoned samples mixed in.

Run in the serving environment (``.venv-serve/bin/python``: PyTriton's client), against
``tools/serve_prm.py --protocol aligner`` (``--aligner-url``) and ``--protocol http``
(``--http-url``, no token) serving the same PRM with the same ``--response-marker``:

The actor's text is ``prompt + response``: with ``--chat-template`` the prompt is the actor
tokenizer's chat template around the raw question (its generation prompt must end with the
marker) and the response ends with its eos, as a chat actor generates; else question + marker.

1. reference rewards: ``POST /score`` with the raw question and the response apart;
2. (``--refusal-check``) a first batch in which the marker occurs in no row must fail with an
   error naming the marker (not answer every row with the fallback);
3. NeMo-Aligner's call, exactly as its actor makes it (``reward_critic_clients.py`` +
   ``http_communicator.py``): ``FuturesModelClient(url, "reward_model").infer_batch(tokens=,
   sequence_lengths=)``, tokens int64 [B, pad_to_length] right-padded with 0, lengths int64
   [B, 1]; ``rewards`` must be float32 [B, 1] equal to /score within ``--tol``, for each
   ``--batch-sizes``; so must OpenRLHF's ``/get_reward`` (with and without ``prompts``) and
   ``/score`` given the templated prompt;
4. load: ``--rounds`` rollout batches in flight at once (futures), ``--poison`` of the rows
   poisoned (no marker, the step tag, longer than the PRM, a length outside the row), and
   OpenRLHF v0.11.0-style single-sample ``POST /get_reward`` requests from threads, poisoned
   alike. Every batch and request must succeed, poisoned rows get the fallback, the others
   exactly their reference reward;
5. (``--flood N``) one batch of N rows without the marker: every row gets the fallback (the
   servers' fallback-rate alarm is what the caller checks in their logs).

Prints and writes (``--out``) a JSON summary; exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

QUESTIONS = ["Tom has {a} apples and buys {b} more. How many apples does he have?",
             "A box holds {a} pens; {b} are added. How many pens are in the box?"]
POISONS = ("no_marker", "step_tag", "too_long", "bad_length")


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def clean_samples(n: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        answer = a + b + (0 if i % 3 else 1)  # some wrong answers, for a spread of rewards
        q = QUESTIONS[i % 2].format(a=a, b=b)
        out.append((q, f"Start with {a}.\nAdd {b} to get {a} + {b} = {answer}.\n#### {answer}"))
    return out


class Actor:
    """What the actor sends: its prompt for a question, and its generation's end."""

    def __init__(self, tok, marker: str, chat_template: bool):
        self.tok, self.marker, self.chat_template = tok, marker, chat_template
        self.eos = (tok.eos_token or "") if chat_template else ""
        if chat_template and not self.prompt("Q").endswith(marker):
            raise SystemExit(f"the actor's chat template does not end its prompt with the marker {marker!r}: "
                             f"{self.prompt('Q')!r}")

    def prompt(self, question: str) -> str:
        if not self.chat_template:
            return question + self.marker
        return self.tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                            add_generation_prompt=True)

    def text(self, question: str, response: str) -> str:
        return self.prompt(question) + response + self.eos


def aligner_batch(actor: Actor, samples, poison: dict[int, str]) -> dict[str, np.ndarray]:
    rows = []
    for i, (q, r) in enumerate(samples):
        kind = poison.get(i)
        text = actor.text(q, r)
        if kind == "no_marker":
            text = q + "\n" + r
        elif kind == "step_tag":
            text = actor.text(q, "A step \u043a\u0438 holding the tag.\n" + r)
        elif kind == "too_long":
            text = actor.text(q, "\n".join(f"Step {k}: nothing new is learned here." for k in range(120)))
        rows.append(actor.tok(text, add_special_tokens=False)["input_ids"])
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), dtype=np.int64)  # right-padded with 0, as pad_to_length does
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    lengths = np.array([[len(r)] for r in rows], dtype=np.int64)
    for i, kind in poison.items():
        if kind == "bad_length":
            lengths[i, 0] = width + 7
    return {"tokens": tokens, "sequence_lengths": lengths}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--aligner-url", required=True)
    p.add_argument("--http-url", required=True)
    p.add_argument("--actor-tokenizer", required=True, help="HF tokenizer dir the 'actor' uses")
    p.add_argument("--marker", required=True)
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--rounds", type=int, default=8, help="rollout batches in flight in the load phase")
    p.add_argument("--rollout-batch", type=int, default=16)
    p.add_argument("--http-requests", type=int, default=80)
    p.add_argument("--poison", type=float, default=0.05)
    p.add_argument("--chat-template", action="store_true", help="the actor's prompt is its tokenizer's chat template")
    p.add_argument("--refusal-check", action="store_true",
                   help="first send a batch without the marker: it must be refused with an error naming the marker")
    p.add_argument("--flood", type=int, default=0, help="finally send a batch of this many rows without the marker")
    p.add_argument("--fallback", type=float, help="the servers' fallback reward (default: read from /health)")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args(argv)

    from pytriton.client import FuturesModelClient
    from transformers import AutoTokenizer

    rng = random.Random(args.seed)
    actor = Actor(AutoTokenizer.from_pretrained(args.actor_tokenizer), args.marker, args.chat_template)
    if args.fallback is None:
        with urllib.request.urlopen(args.http_url + "/health", timeout=60) as r:
            args.fallback = json.loads(r.read()).get("fallback_reward")
    if args.fallback is None:  # a server from before /health named it
        with urllib.request.urlopen(args.http_url + "/metrics", timeout=60) as r:
            args.fallback = json.loads(r.read())["unscorable"]["fallback_reward"]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    pool = clean_samples(max(sizes + [args.rollout_batch, 64]), rng)
    ref = [r["reward"] for r in post(args.http_url, "/score",
                                     {"items": [{"prompt": q, "response": r} for q, r in pool]})["results"]]
    summary: dict = {"equality": {}, "failures": []}
    # NeMo-Aligner's HTTPCommunicator: one FuturesModelClient per server, inference_timeout_s=600000
    with FuturesModelClient(args.aligner_url, "reward_model", init_timeout_s=120,
                            inference_timeout_s=600000) as client:
        if args.refusal_check:
            try:
                client.infer_batch(**aligner_batch(actor, pool[:4], {i: "no_marker" for i in range(4)})).result()
                summary["refusal"] = {"refused": False}
                summary["failures"].append("a first batch without the marker was answered, not refused")
            except Exception as e:  # what the PPO actor's future.result() raises
                summary["refusal"] = {"refused": True, "error": f"{type(e).__name__}: {e}"[-600:]}
                if "response marker" not in str(e):
                    summary["failures"].append(f"the refusal does not name the response marker: {e}")
        for b in sizes:
            start = time.perf_counter()
            out = client.infer_batch(**aligner_batch(actor, pool[:b], {})).result()
            rewards = out["rewards"]
            diff = float(np.abs(rewards[:, 0] - np.asarray(ref[:b], dtype=np.float32)).max())
            texts = [actor.text(q, r) for q, r in pool[:b]]
            http = {"get_reward_prompts": post(args.http_url, "/get_reward", {
                        "query": texts, "prompts": [actor.prompt(q) for q, _ in pool[:b]]})["rewards"],
                    "get_reward_marker": post(args.http_url, "/get_reward", {"query": texts})["rewards"],
                    "score_templated_prompt": [x["reward"] for x in post(args.http_url, "/score", {"items": [
                        {"prompt": actor.prompt(q), "response": r + actor.eos} for q, r in pool[:b]]})["results"]]}
            http_diff = {k: float(np.abs(np.asarray(v) - np.asarray(ref[:b])).max()) for k, v in http.items()}
            summary["equality"][str(b)] = {"shape": list(rewards.shape), "dtype": str(rewards.dtype),
                                           "max_abs_diff": diff, "http_max_abs_diff": http_diff,
                                           "seconds": round(time.perf_counter() - start, 3)}
            if rewards.shape != (b, 1) or rewards.dtype != np.float32 or diff > args.tol:
                summary["failures"].append(f"aligner B={b}: shape {rewards.shape} {rewards.dtype} diff {diff}")
            if max(http_diff.values()) > args.tol:
                summary["failures"].append(f"http B={b}: differs from /score with the raw question: {http_diff}")

        # load: rounds in flight at once, poisoned rows mixed in
        start = time.perf_counter()
        jobs = []
        total = args.rounds * args.rollout_batch  # exactly round(poison * rows) rows poisoned, kinds in turn
        bad_rows = sorted(rng.sample(range(total), max(1, round(args.poison * total)) if args.poison > 0 else 0))
        kinds = {r: POISONS[k % len(POISONS)] for k, r in enumerate(bad_rows)}
        for n in range(args.rounds):
            idx = rng.sample(range(len(pool)), args.rollout_batch)
            poison = {i: kinds[n * args.rollout_batch + i] for i in range(len(idx)) if n * args.rollout_batch + i in kinds}
            feed = aligner_batch(actor, [pool[i] for i in idx], poison)
            jobs.append((idx, poison, client.infer_batch(**feed)))
        failed, poisoned, wrong = 0, 0, 0
        for idx, poison, fut in jobs:
            try:
                got = fut.result()["rewards"][:, 0]
            except Exception as e:  # what would crash the PPO actor
                failed += 1
                summary["failures"].append(f"aligner batch failed: {type(e).__name__}: {e}")
                continue
            for row, i in enumerate(idx):
                want = args.fallback if row in poison else ref[i]
                poisoned += row in poison
                wrong += abs(float(got[row]) - want) > args.tol
        summary["aligner_load"] = {"batches": len(jobs), "rows": len(jobs) * args.rollout_batch,
                                   "failed_batches": failed, "poisoned_rows": poisoned, "wrong_rewards": wrong,
                                   "seconds": round(time.perf_counter() - start, 3)}
        if wrong:
            summary["failures"].append(f"aligner load: {wrong} rewards differ from their reference")
        if args.flood:
            flood = [pool[i % len(pool)] for i in range(args.flood)]
            got = client.infer_batch(**aligner_batch(actor, flood, {i: "no_marker" for i in range(args.flood)})
                                     ).result()["rewards"][:, 0]
            fallbacks = int(np.sum(np.abs(got - args.fallback) <= args.tol))
            summary["flood"] = {"rows": args.flood, "fallback_rows": fallbacks}
            if summary["flood"]["fallback_rows"] != args.flood:
                summary["failures"].append(f"flood: {summary['flood']}")

    # OpenRLHF v0.11.0: one sample per POST /get_reward, no auth header
    bad_requests = set(rng.sample(range(args.http_requests), max(1, round(args.poison * args.http_requests))
                                  if args.poison > 0 else 0))

    def one(k: int):
        i = k % len(pool)
        q, r = pool[i]
        bad = k in bad_requests
        query = (q + "\nunrelated text with no step") if bad else (actor.prompt(q) + r + "<|im_end|>")
        try:
            out = post(args.http_url, "/get_reward", {"query": [query], "prompts": [actor.prompt(q)], "labels": [""]})
        except Exception as e:
            return "failed", f"{type(e).__name__}: {e}"
        want = args.fallback if bad else ref[i]
        return ("poisoned" if bad else "ok") if abs(out["rewards"][0] - want) <= args.tol else "wrong", out

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(args.http_requests)))
    counts = {k: sum(1 for s, _ in results if s == k) for k in ("ok", "poisoned", "wrong", "failed")}
    summary["http_load"] = {"requests": args.http_requests, **counts, "seconds": round(time.perf_counter() - start, 3)}
    if counts["wrong"] or counts["failed"]:
        summary["failures"].append(f"http load: {counts}")
    with urllib.request.urlopen(args.http_url + "/metrics", timeout=60) as r:
        summary["http_metrics_unscorable"] = json.loads(r.read())["unscorable"]
    if summary["http_metrics_unscorable"]["total"] < counts["poisoned"]:
        summary["failures"].append("http /metrics counted fewer unscorable samples than were sent")
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
