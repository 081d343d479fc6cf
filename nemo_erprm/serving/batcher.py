"""Dynamic batching for the scoring service (asyncio).

Requests wait in a bounded queue (full -> the caller gets :class:`Overloaded`, HTTP 503); one
worker takes up to ``max_batch`` items or ``max_tokens`` tokens, waiting at most
``max_wait_ms`` for a batch to fill, and runs the model in a worker thread so the event loop
keeps accepting requests. Each request has a deadline (:class:`TimedOut`, HTTP 504); a
request whose deadline passed while queued is not scored. ``drain()`` stops intake and
returns once every accepted request is answered (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence


class Overloaded(Exception):
    pass


class TimedOut(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class BatcherConfig:
    max_batch: int = 16
    max_tokens: int = 16384
    max_wait_ms: float = 5.0
    queue_size: int = 1024
    timeout_s: float = 60.0


@dataclass
class _Pending:
    item: Any
    tokens: int
    future: asyncio.Future
    deadline: float


@dataclass
class BatchStats:
    requests: int = 0
    items: int = 0
    errors: int = 0
    rejected: int = 0
    timeouts: int = 0
    batches: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=10000))

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> Optional[float]:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

        return {"requests": self.requests, "items": self.items, "errors": self.errors, "rejected": self.rejected,
                "timeouts": self.timeouts, "batches": self.batches,
                "mean_batch_size": round(self.items / self.batches, 3) if self.batches else None,
                "batch_sizes": dict(sorted(self.batch_sizes.items())),
                "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "count": len(lat)}}


class DynamicBatcher:
    def __init__(self, fn: Callable[[Sequence[Any]], list[Any]], config: BatcherConfig):
        self.fn, self.config = fn, config
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.queue_size)
        self.stats = BatchStats()
        self._closing = False
        self._in_flight = 0
        self._worker: Optional[asyncio.Task] = None
        self._held: Optional[_Pending] = None  # an item that did not fit the previous batch

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, items: Sequence[Any], tokens: Sequence[int]) -> list[Any]:
        """Results for ``items`` (scored together with other requests' items)."""
        if self._closing:
            raise ShuttingDown()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.config.timeout_s
        pending = [_Pending(it, n, loop.create_future(), deadline) for it, n in zip(items, tokens)]
        if self.queue.qsize() + len(pending) > self.config.queue_size:
            self.stats.rejected += 1
            raise Overloaded()
        self._in_flight += 1
        start = time.perf_counter()
        try:
            for p in pending:
                self.queue.put_nowait(p)
            try:
                results = await asyncio.wait_for(asyncio.gather(*(p.future for p in pending)),
                                                 timeout=max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                self.stats.timeouts += 1
                raise TimedOut() from None
            self.stats.requests += 1
            self.stats.latencies_ms.append((time.perf_counter() - start) * 1000)
            return list(results)
        finally:
            self._in_flight -= 1

    async def _next_batch(self) -> list[_Pending]:
        first = self._held or await self.queue.get()
        self._held = None
        batch, tokens = [first], first.tokens
        wait_until = time.monotonic() + self.config.max_wait_ms / 1000
        while len(batch) < self.config.max_batch:
            timeout = wait_until - time.monotonic()
            try:
                nxt = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if tokens + nxt.tokens > self.config.max_tokens:
                self._held = nxt
                break
            batch.append(nxt)
            tokens += nxt.tokens
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            now = time.monotonic()
            live = [p for p in batch if not p.future.done() and p.deadline > now]
            if not live:
                continue
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.batch_sizes[len(live)] = self.stats.batch_sizes.get(len(live), 0) + 1
            try:
                results = await loop.run_in_executor(None, self.fn, [p.item for p in live])
            except Exception as e:  # the model failed on this batch: every request in it gets the error
                self.stats.errors += 1
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, r in zip(live, results):
                if not p.future.done():
                    p.future.set_result(r)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Stop intake; return when every accepted request is answered (or after ``timeout_s``)."""
        self._closing = True
        end = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
