"""Dynamic batching across requests: an asyncio admission queue, one model worker.

Work arrives as ``Encoded`` items (one pair or text each) with a future. The worker takes
everything pending as a *round*, sorts it by length, and cuts it into micro-batches whose padded
cost (longest x rows) stays under ``max_batch_tokens``; a request's items all enter one round, so
they never wait behind each other in separate rounds. Items whose future was cancelled (client
left, deadline passed) are skipped. A failing forward pass fails every item in that batch, never
silently; a crashed worker loop fails everything it held and restarts (see ``Batcher``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rankserve.engine.tokenize import Encoded
from rankserve.errors import ModelFailure, NotReady, Overloaded
from rankserve.metrics import Metrics

log = logging.getLogger("rankserve")
Forward = Callable[[Sequence[Encoded]], torch.Tensor]


@dataclass(slots=True)
class WorkItem:
    encoded: Encoded
    future: asyncio.Future
    enqueued: float = 0.0  # perf_counter() at admission, for the queue-wait metric


def cut_batches(items: list[WorkItem], max_batch_tokens: int) -> list[list[WorkItem]]:
    """Length-sorted (longest first) micro-batches with padded cost <= budget (at least one row)."""
    ordered = sorted(items, key=lambda it: len(it.encoded), reverse=True)
    batches: list[list[WorkItem]] = []
    current: list[WorkItem] = []
    for item in ordered:
        longest = len(current[0].encoded) if current else len(item.encoded)
        if current and longest * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


class Batcher:
    """The admission queue and its one model worker.

    Admission is bounded three ways (items, tokens, requests: ``0`` = unbounded); past any bound a
    request is refused at once with ``Overloaded`` (503 + Retry-After), never queued. A forward
    pass that raises fails exactly its batch's items. If the worker loop itself dies (a bug, or a
    ``BaseException`` from the model thread), every waiting item fails, the loop restarts, and
    after ``max_restarts`` crashes the batcher is dead: ``dead`` says why and ``on_fatal`` is
    called so the server can report not-ready and exit for its supervisor to restart it.
    """

    max_restarts = 3

    def __init__(self, forward: Forward, *, max_batch_tokens: int, max_queue_items: int, metrics: Metrics,
                 max_queue_tokens: int = 0, max_queue_requests: int = 0,
                 on_fatal: Callable[[str], None] | None = None):
        self.forward = forward
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_items = max_queue_items
        self.max_queue_tokens = max_queue_tokens
        self.max_queue_requests = max_queue_requests
        self.metrics = metrics
        self.on_fatal = on_fatal
        # Test-only fault hook: called in the model thread with each batch before ``forward``; it
        # can raise to simulate a failing pass or a dying worker. Not reachable from config or HTTP.
        self.fault: Callable[[Sequence[Encoded]], None] | None = None
        self.pending: list[WorkItem] = []
        self.in_flight = 0  # items taken into the current round, not yet answered
        self.queued_tokens = 0  # tokens of pending + in-flight items
        self.requests = 0  # submits not yet answered
        self.restarts = 0
        self.dead: str | None = None
        self._round: list[WorkItem] = []
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankserve-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rankserve-batcher")
        self._task.add_done_callback(self._worker_exited)

    async def stop(self) -> None:
        if self._task and not self._task.done():  # a dead worker's task is done: nothing to stop
            self._task.remove_done_callback(self._worker_exited)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._fail_all(ModelFailure("server is shutting down"))
        self._thread.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self.pending) + self.in_flight

    def _refuse(self, what: str, have: int, limit: int) -> Overloaded:
        return Overloaded(f"server is at capacity ({have} {what} queued, limit {limit}); retry shortly",
                          headers={"Retry-After": "1"})

    async def submit(self, encoded: Sequence[Encoded]) -> list[torch.Tensor]:
        """Queue the items; resolve to one output row per item, in order."""
        if self.dead is not None:
            raise NotReady(f"the model worker has stopped ({self.dead}); the server is restarting",
                           headers={"Retry-After": "5"})
        tokens = sum(len(e) for e in encoded)
        if self.depth + len(encoded) > self.max_queue_items:
            raise self._refuse("items", self.depth, self.max_queue_items)
        if self.max_queue_tokens and self.queued_tokens + tokens > self.max_queue_tokens:
            raise self._refuse("tokens", self.queued_tokens, self.max_queue_tokens)
        if self.max_queue_requests and self.requests >= self.max_queue_requests:
            raise self._refuse("requests", self.requests, self.max_queue_requests)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [WorkItem(e, loop.create_future(), now) for e in encoded]
        self.pending.extend(items)
        self.queued_tokens += tokens
        self.requests += 1
        self._gauges()
        self._wake.set()
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        except asyncio.CancelledError:
            for it in items:
                it.future.cancel()
            raise
        finally:
            self.requests -= 1

    def _gauges(self) -> None:
        self.metrics.queue_depth.set(self.depth)
        self.metrics.queue_tokens.set(self.queued_tokens)

    def _release(self, items: Sequence[WorkItem]) -> None:
        """Items leave the in-flight count (answered, failed, or skipped because cancelled)."""
        self.in_flight -= len(items)
        self.queued_tokens -= sum(len(it.encoded) for it in items)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                self._round, self.pending = self.pending, []
                self.in_flight = len(self._round)
                for batch in cut_batches(self._round, self.max_batch_tokens):
                    live = [it for it in batch if not it.future.done()]
                    self._release([it for it in batch if it.future.done()])
                    if live:
                        await self._run_batch(loop, live)
                        self._release(live)
                    self._gauges()
                self._round = []
                self.in_flight = 0

    def _model_pass(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        """Runs in the model thread."""
        if self.fault is not None:
            self.fault(encoded)
        return self.forward(encoded)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[WorkItem]) -> None:
        encoded = [it.encoded for it in batch]
        start = time.perf_counter()
        for it in batch:
            self.metrics.queue_wait.observe(start - it.enqueued)
        try:
            out = await loop.run_in_executor(self._thread, self._model_pass, encoded)
        except Exception as exc:  # the model failed: every waiter in this batch hears about it
            oom = isinstance(exc, (torch.OutOfMemoryError, MemoryError))
            log.error("forward pass failed for a batch of %d (%d padded tokens): %s: %s", len(batch),
                      len(encoded[0]) * len(encoded), type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            if oom and torch.cuda.is_available():
                torch.cuda.empty_cache()
            why = "out of memory" if oom else "model forward failed"
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(ModelFailure(f"{why} on a batch of {len(batch)}: {type(exc).__name__}: {exc}"))
            return
        padded = len(encoded[0]) * len(encoded)
        real = sum(len(e) for e in encoded)
        self.metrics.forward_seconds.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(padded)
        self.metrics.batch_fill.observe(real / padded)
        self.metrics.tokens.inc(real)
        for it, row in zip(batch, out):
            if not it.future.done():
                it.future.set_result(row)

    def _fail_all(self, error: Exception) -> None:
        """Fail every item still queued or in the current round; reset the counters."""
        for item in [*self._round, *self.pending]:
            if not item.future.done():
                item.future.set_exception(error)
        self._round, self.pending = [], []
        self.in_flight = self.queued_tokens = 0
        self._gauges()

    def _worker_exited(self, task: asyncio.Task) -> None:
        """The worker loop ended on its own: it crashed. Fail its work; restart it or give up."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        why = f"{type(exc).__name__}: {exc}"
        log.critical("model worker crashed: %s", why, exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
        self._fail_all(ModelFailure(f"the model worker crashed while running this request ({why})"))
        self.restarts += 1
        self.metrics.worker_restarts.inc()
        if self.restarts > self.max_restarts:
            self.dead = f"crashed {self.restarts} times, last: {why}"
            if self.on_fatal is not None:
                self.on_fatal(f"model worker {self.dead}")
            return
        self.start()
