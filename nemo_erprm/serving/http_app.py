"""The HTTP reward service (FastAPI).

- ``POST /score``: ``{"prompt": str, "response": str}`` or ``{"prompt", "steps": [str]}``, or a
  batch ``{"items": [...]}`` of those -> ``{"steps", "step_scores", "reward"}`` (or
  ``{"results": [...]}``).
- ``POST /get_reward`` (OpenRLHF's remote reward model): ``{"query": [prompt+response],
  "prompts": [prompt], "labels": [...]}`` -> ``{"rewards": [...], "scores": [...],
  "extra_logs": {"num_steps": [...], "min_step_score": [...]}}``. The response is the part of
  each query after its prompt (or after ``--response-marker`` when no prompts are sent).
- ``GET /health``; ``GET /metrics`` (requests, batch sizes, latency percentiles, ``http``:
  every answered request by status, refused and failed ones included, and ``unscorable``:
  fallback rewards by reason, ``recent`` the fallback rate over the last samples).

Safety: bearer token (``Authorization: Bearer ...``, the scheme in any case) on scoring and
``/metrics`` when configured (``/health`` stays open for probes); body size, items per request
and text length limits (413); malformed input -> 4xx with ``{"error", "field"}``; a full queue
-> 503, a missed deadline -> 504; shutdown drains accepted requests. Requests are parsed
(prompt matching, question extraction, token counts) in worker threads, the lengths checked
first, so one large request never stalls the event loop and the others.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here

from nemo_erprm.serving.batcher import BatcherConfig, DynamicBatcher, Overloaded, ShuttingDown, TimedOut
from nemo_erprm.serving.service import Item, RequestError, RewardService, Unscorable

access_log = logging.getLogger("nemo_erprm.serving.access")  # one line per request (serve_prm.py shows it)
PARSE_THREADS = 2  # request parsing off the event loop; the model runs in the loop's default executor


@dataclass
class Limits:
    max_body_bytes: int = 4 << 20
    max_items: int = 256
    max_chars: int = 32000  # per prompt + response


def _error(status: int, message: str, field: Optional[str] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, **({"field": field} if field else {})}, status_code=status)


def _str(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise RequestError(f"{where}{key}", "missing" if value is None else f"must be a string, got {type(value).__name__}")
    return value


def _first_invalid_text(obj: Any, where: str = "") -> Optional[str]:
    """The field (``items[0].response``) of the first string that is not encodable Unicode."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(obj, dict):
        children = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for name, value in children:
        found = _first_invalid_text(value, name)
        if found is not None:
            return found
    return None


class HTTPCounters:
    """Every answered request by status class, for /metrics (the batcher counts only what
    reached the model)."""

    def __init__(self) -> None:
        self.responses: dict[int, int] = {}

    def count(self, status: int) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        by_class = lambda lo: sum(n for s, n in self.responses.items() if lo <= s < lo + 100)  # noqa: E731
        return {"total": sum(self.responses.values()), "ok": by_class(200), "client_errors": by_class(400),
                "server_errors": by_class(500), "by_status": {str(k): v for k, v in sorted(self.responses.items())}}


def build_app(service: RewardService, batcher_config: BatcherConfig, token: Optional[str] = None,
              limits: Limits = Limits()):
    from contextlib import asynccontextmanager

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = DynamicBatcher(service.score_items, batcher_config)
        batcher.start()
        state["batcher"] = batcher
        state["parse_pool"] = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="parse")
        yield
        await batcher.drain()  # graceful shutdown: answer what was accepted
        state["parse_pool"].shutdown(wait=False)

    app = FastAPI(title="nemo-erprm reward service", lifespan=lifespan)
    counters = HTTPCounters()

    @app.middleware("http")
    async def count_and_log(request: Request, call_next):
        import time

        start = time.perf_counter()
        response = await call_next(request)
        counters.count(response.status_code)
        access_log.info("%s %s %d %.1fms", request.method, request.url.path, response.status_code,
                        (time.perf_counter() - start) * 1000)
        return response

    def check_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        # RFC 9110: the scheme is case-insensitive ("bearer" is "Bearer")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError("authorization", "missing or wrong bearer token", status=401)

    async def off_loop(fn, *args):
        """``fn(*args)`` in a parse thread: prompt matching and tokenization of a large request
        must not hold the event loop (every other request would wait)."""
        return await asyncio.get_running_loop().run_in_executor(state["parse_pool"], fn, *args)

    async def read_json(request: Request) -> Any:
        check_token(request)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            raise RequestError("body", f"larger than {limits.max_body_bytes} bytes", status=413)
        body = await request.body()
        if len(body) > limits.max_body_bytes:
            raise RequestError("body", f"larger than {limits.max_body_bytes} bytes", status=413)
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError("body", f"not valid JSON ({e})", status=400) from None
        bad = _first_invalid_text(obj)
        if bad is not None:  # "\ud800": valid JSON, but no tokenizer can encode it
            raise RequestError(bad or "body", "holds a lone surrogate escape (e.g. \\ud800): not Unicode text",
                               status=400)
        return obj

    def check_len(prompt: str, response: str, field: str) -> None:
        if len(prompt) + len(response) > limits.max_chars:
            raise Unscorable("too_long", field, f"longer than {limits.max_chars} characters", status=413)

    async def score(items: list[Item]):
        batcher: DynamicBatcher = state["batcher"]
        tokens = await off_loop(lambda: [service.count_tokens(it) for it in items])
        return await batcher.submit(items, tokens)

    def parse_score_item(obj: Any, where: str) -> Item:
        """A well-formed item, or the :class:`Unscorable` that answers it with the fallback
        reward (malformed input stays a 4xx for the whole request)."""
        if not isinstance(obj, dict):
            raise RequestError(where.rstrip("."), "must be an object")
        prompt = _str(obj, "prompt", where)
        if "steps" in obj:
            steps = obj["steps"]
            if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
                raise RequestError(f"{where}steps", "must be a list of strings")
            try:
                check_len(prompt, "".join(steps), f"{where}steps")
            except Unscorable as u:
                return u
            return service.item_or_unscorable(prompt, steps=steps, field=f"{where}steps")
        response = _str(obj, "response", where)
        try:
            check_len(prompt, response, f"{where}response")
        except Unscorable as u:
            return u
        return service.item_or_unscorable(prompt, response=response, field=f"{where}response")

    def openrlhf_items(queries: list[str], prompts: Optional[list[str]]) -> list[Item]:
        """One item per query; one unscorable query gets the fallback reward, never a failed
        request. Lengths are checked before the prompt is matched (bounded work)."""
        if prompts is None:  # split at the marker (a batch without it anywhere is refused)
            splits: list[Any] = service.split_batch(queries, "query")
        else:
            splits = []
            for i, (q, p) in enumerate(zip(queries, prompts)):
                try:
                    check_len(q, "", f"query[{i}]")
                    check_len(p, "", f"prompts[{i}]")
                    splits.append(service.split_query(q, p, f"query[{i}]"))
                except Unscorable as u:
                    splits.append(u)
        items: list[Item] = []
        for i, split in enumerate(splits):
            if isinstance(split, Unscorable):
                items.append(split)
                continue
            try:
                check_len(*split, f"query[{i}]")
            except Unscorable as u:
                items.append(u)
                continue
            items.append(service.item_or_unscorable(split[0], response=split[1], field=f"query[{i}]"))
        return items

    async def guarded(handler, request: Request):
        try:
            return await handler(await read_json(request))
        except RequestError as e:
            return _error(e.status, e.message, e.field)
        except Overloaded:
            return _error(503, "server busy: queue full, retry later")
        except ShuttingDown:
            return _error(503, "server shutting down")
        except TimedOut:
            return _error(504, f"not scored within {batcher_config.timeout_s}s")
        except Exception as e:  # the model failed on a batch: a JSON 500, and the server keeps serving
            return _error(500, f"scoring failed: {type(e).__name__}: {e}")

    @app.post("/score")
    async def score_route(request: Request):
        async def handle(body):
            if isinstance(body, dict) and "items" in body:
                raw = body["items"]
                if not isinstance(raw, list) or not raw:
                    raise RequestError("items", "must be a non-empty list")
                if len(raw) > limits.max_items:
                    raise RequestError("items", f"more than {limits.max_items} items", status=413)
                items = await off_loop(lambda: [parse_score_item(x, f"items[{i}].") for i, x in enumerate(raw)])
                return {"results": [vars(r) for r in await score(items)]}
            (result,) = await score([await off_loop(parse_score_item, body, "")])
            return vars(result)

        return await guarded(handle, request)

    @app.post("/get_reward")
    async def openrlhf_route(request: Request):
        async def handle(body):
            if not isinstance(body, dict):
                raise RequestError("body", "must be an object")
            queries = body.get("query")
            if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
                raise RequestError("query", "must be a list of strings")
            if len(queries) > limits.max_items:
                raise RequestError("query", f"more than {limits.max_items} queries", status=413)
            prompts = body.get("prompts")
            if prompts is not None and (not isinstance(prompts, list) or len(prompts) != len(queries)
                                        or not all(isinstance(p, str) for p in prompts)):
                raise RequestError("prompts", "must be a list of strings, one per query")
            results = await score(await off_loop(openrlhf_items, queries, prompts))
            rewards = [r.reward for r in results]
            return {"rewards": rewards, "scores": rewards,
                    "extra_logs": {"num_steps": [len(r.steps) for r in results],
                                   "min_step_score": [min(r.step_scores) if r.step_scores else 0.0 for r in results],
                                   "unscorable": [float(r.unscorable is not None) for r in results]}}

        return await guarded(handle, request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "step_tag": service.scorer.step_tag, "aggregation": service.config.aggregation,
                "transform": service.config.transform, "fallback_reward": service.fallback}

    @app.get("/metrics")
    async def metrics(request: Request):
        # "errors"/"rejected" count model batches that failed and full-queue refusals; "http"
        # counts every answered request, the 4xx refused before reaching the model included
        try:
            check_token(request)
        except RequestError as e:
            return _error(e.status, e.message, e.field)
        return {**state["batcher"].stats.snapshot(), "http": counters.snapshot(),
                "unscorable": service.unscorable_snapshot()}

    return app
