"""Dynamic batching across requests: an asyncio admission queue, one model worker, fair scheduling.

Work arrives as ``Encoded`` items (one pair or text each) with a future; one request's items form
a *job*. Each time the model thread is free, the worker forms **one** micro-batch from everything
pending at that moment, new arrivals included (continuous batching): jobs are taken in order of
priority (``interactive`` before ``batch``), then smallest remaining work first, and their
items, longest first, fill the padded budget (longest x rows <= ``max_batch_tokens``). So a
3-passage request that arrives while a 600-passage job runs goes into the very next pass instead
of waiting for the whole job; a job nobody has served for ``STARVE_AFTER`` seconds goes first, so
big jobs always progress. A request's items may run in many passes; its answer still comes back
whole and in order.

A pass cannot be interrupted, and on CPU a full 4096-token pass takes ~1.4 s (2 cores), so a
small request arriving just after one starts would still wait that long. With ``express`` (CPU
runners whose ``forward`` may run from two threads at once), a second model thread, the *express
lane*, runs small interactive jobs (the whole job fits one pass) **beside** a pass already in the
model, instead of after it: both share the cores for that time, and the small request answers in
~2x its idle time instead of waiting (bench/mixed_load.py, docs/batch-invariance.md). Time slicing
was measured and rejected: passes short enough for that (~250 tokens, 0.1 s) cost 23 % of the
big job's throughput here, while the express lane costs none (the cores do the same work). Scores
do not change: each pass is computed exactly as it would be alone (tests/api/test_same_bits.py).

Items whose future was cancelled (client left, deadline passed) are dropped.
A failing forward pass fails every item in that batch, never silently; a crashed worker loop fails
everything it held and restarts (see ``Batcher``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rankserve.engine.tokenize import Encoded
from rankserve.errors import ModelFailure, NotReady, Overloaded
from rankserve.metrics import Metrics

log = logging.getLogger("rankserve")
Forward = Callable[[Sequence[Encoded]], np.ndarray]
Priority = Literal["interactive", "batch"]
PRIORITIES: dict[str, int] = {"interactive": 0, "batch": 1}
# A job not served for this long goes before every other (bounded starvation for big/batch jobs).
STARVE_AFTER = 1.0


@dataclass(slots=True)
class WorkItem:
    encoded: Encoded
    future: asyncio.Future
    enqueued: float = 0.0  # perf_counter() at admission, for the queue-wait metric


def cut_batches(items: list[WorkItem], max_batch_tokens: int) -> list[list[WorkItem]]:
    """Length-sorted (longest first) micro-batches with padded cost <= budget (at least one row).

    The offline form of the budget rule (benchmarks batch a fixed workload with it); the server's
    ``Batcher.next_batch`` applies the same rule to live jobs.
    """
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


@dataclass(slots=True, eq=False)
class Job:
    """One request's items not yet taken into a batch, longest first."""

    items: deque[WorkItem]
    priority: int  # PRIORITIES value: lower goes first
    arrival: float
    tokens: int  # tokens still waiting
    served: float = field(default=0.0)  # when an item last went into a batch (arrival until then)
    express: bool = False  # small and interactive: may run on the express lane beside a long pass

    def key(self, now: float) -> tuple:
        """Sort key: starved jobs first, longest-unserved first; then priority, remaining work, arrival."""
        if now - self.served >= STARVE_AFTER:
            return (0, self.served, 0, 0.0)
        return (1, self.priority, self.tokens, self.arrival)


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

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch_tokens: int,
        max_queue_items: int,
        metrics: Metrics,
        max_queue_tokens: int = 0,
        max_queue_requests: int = 0,
        express: bool = False,
        on_fatal: Callable[[str], None] | None = None,
    ):
        self.forward = forward
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_items = max_queue_items
        self.max_queue_tokens = max_queue_tokens
        self.max_queue_requests = max_queue_requests
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.express = express  # run small interactive jobs beside a pass in the model (module docstring)
        # Test-only fault hook: called in the model thread with each batch before ``forward``; it
        # can raise to simulate a failing pass or a dying worker. Not reachable from config or HTTP.
        self.fault: Callable[[Sequence[Encoded]], None] | None = None
        self.jobs: list[Job] = []  # admitted requests with items still waiting, in arrival order
        self.queued_tokens = 0  # tokens of pending + in-flight items
        self.requests = 0  # submits not yet answered
        self.restarts = 0
        self.dead: str | None = None
        self._current: list[WorkItem] = []  # the batch in the model (main lane)
        self._express_current: list[WorkItem] = []  # the batch on the express lane
        self._wake = asyncio.Event()
        self._express_wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankserve-model")
        self._express_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankserve-express")
        self._tasks: dict[str, asyncio.Task] = {}

    def start(self) -> None:
        self._start_lane("main")
        if self.express:
            self._start_lane("express")

    def _start_lane(self, lane: str) -> None:
        run = self._run if lane == "main" else self._run_express
        task = asyncio.get_running_loop().create_task(run(), name=f"rankserve-batcher-{lane}")
        task.add_done_callback(self._worker_exited)
        self._tasks[lane] = task

    async def stop(self) -> None:
        for task in self._tasks.values():
            if not task.done():  # a dead worker's task is done: nothing to stop
                task.remove_done_callback(self._worker_exited)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._fail_all(ModelFailure("server is shutting down"))
        self._thread.shutdown(wait=True)
        self._express_thread.shutdown(wait=True)

    @property
    def pending(self) -> list[WorkItem]:
        """Items admitted and not yet in a batch, job by job in arrival order."""
        return [it for job in self.jobs for it in job.items]

    @property
    def depth(self) -> int:
        """Items admitted and not yet answered: waiting in jobs, or in the batch in the model."""
        return sum(len(job.items) for job in self.jobs) + len(self._current) + len(self._express_current)

    def _refuse(self, what: str, have: int, limit: int) -> Overloaded:
        return Overloaded(
            f"server is at capacity ({have} {what} queued, limit {limit}); retry shortly", headers={"Retry-After": "1"}
        )

    def check_admission(self, items: int, tokens: int = 0) -> None:
        """Raise (503) if a request of ``items`` items and ``tokens`` tokens would overfill the queue.

        ``submit`` checks with the real token count; the engine also checks before tokenizing
        (``tokens=0``) so that a refusal under overload costs no tokenization.
        """
        if self.dead is not None:
            raise NotReady(
                f"the model worker has stopped ({self.dead}); the server is restarting", headers={"Retry-After": "5"}
            )
        if self.depth + items > self.max_queue_items:
            raise self._refuse("items", self.depth, self.max_queue_items)
        if self.max_queue_tokens and self.queued_tokens + tokens > self.max_queue_tokens:
            raise self._refuse("tokens", self.queued_tokens, self.max_queue_tokens)
        if self.max_queue_requests and self.requests >= self.max_queue_requests:
            raise self._refuse("requests", self.requests, self.max_queue_requests)

    async def submit(self, encoded: Sequence[Encoded], priority: Priority = "interactive") -> list[np.ndarray]:
        """Queue the items as one job; resolve to one output row per item, in order."""
        tokens = sum(len(e) for e in encoded)
        self.check_admission(len(encoded), tokens)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [WorkItem(e, loop.create_future(), now) for e in encoded]
        longest_first = sorted(items, key=lambda it: len(it.encoded), reverse=True)
        fits_one_pass = max(len(e) for e in encoded) * len(encoded) <= self.max_batch_tokens if encoded else True
        self.jobs.append(
            Job(
                deque(longest_first),
                PRIORITIES[priority],
                now,
                tokens,
                now,
                express=self.express and priority == "interactive" and fits_one_pass,
            )
        )
        self.queued_tokens += tokens
        self.requests += 1
        self._gauges()
        self._wake.set()
        self._express_wake.set()
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
        """A batch's items leave the queue's token count (answered or failed)."""
        self.queued_tokens -= sum(len(it.encoded) for it in items)

    def next_batch(self, express: bool = False) -> list[WorkItem]:
        """One micro-batch from the jobs waiting now (see the module docstring), longest first.

        Jobs go in order of ``Job.key``; each gives its items, longest first, while the padded cost
        stays within the budget; a job whose next item does not fit leaves room for later jobs'
        shorter items. Cancelled items are dropped here. An item over the budget runs alone.
        ``express``: only from jobs that may go on the express lane.
        """
        now = time.perf_counter()
        batch: list[WorkItem] = []
        longest = 0
        for job in sorted(self.jobs, key=lambda j: j.key(now)):
            if express and not job.express:
                continue
            while job.items:
                item = job.items[0]
                if item.future.done():  # cancelled: drop it
                    job.items.popleft()
                    job.tokens -= len(item.encoded)
                    self.queued_tokens -= len(item.encoded)
                    continue
                n = len(item.encoded)
                if batch and max(longest, n) * (len(batch) + 1) > self.max_batch_tokens:
                    break
                job.items.popleft()
                job.tokens -= n
                job.served = now
                batch.append(item)
                longest = max(longest, n)
        self.jobs = [job for job in self.jobs if job.items]
        batch.sort(key=lambda it: len(it.encoded), reverse=True)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.jobs:
                self._current = self.next_batch()
                if self._current:
                    self._express_wake.set()  # work arriving during this pass may go beside it
                    await self._run_batch(loop, self._current, self._thread)
                    self._release(self._current)
                self._current = []
                self._gauges()

    async def _run_express(self) -> None:
        """The express lane: while the main lane has a pass in the model, small interactive jobs
        run beside it on a second model thread (with the main lane idle, the main lane takes them)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._express_wake.wait()
            self._express_wake.clear()
            while self._current and any(job.express for job in self.jobs):
                self._express_current = self.next_batch(express=True)
                if self._express_current:
                    self.metrics.express_passes.inc()
                    await self._run_batch(loop, self._express_current, self._express_thread)
                    self._release(self._express_current)
                self._express_current = []
                self._gauges()

    def _model_pass(self, encoded: Sequence[Encoded]) -> np.ndarray:
        """Runs in the model thread."""
        if self.fault is not None:
            self.fault(encoded)
        return self.forward(encoded)

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[WorkItem], thread: ThreadPoolExecutor
    ) -> None:
        encoded = [it.encoded for it in batch]
        start = time.perf_counter()
        for it in batch:
            self.metrics.queue_wait.observe(start - it.enqueued)
        try:
            out = await loop.run_in_executor(thread, self._model_pass, encoded)
        except Exception as exc:  # the model failed: every waiter in this batch hears about it
            torch = sys.modules.get("torch")  # loaded only by the torch backend (or an export)
            oom = isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError))
            log.error(
                "forward pass failed for a batch of %d (%d padded tokens): %s: %s",
                len(batch),
                len(encoded[0]) * len(encoded),
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            if oom and torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
            why = "out of memory" if oom else "model forward failed"
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(
                        ModelFailure(f"{why} on a batch of {len(batch)}: {type(exc).__name__}: {exc}")
                    )
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
        for item in [*self._current, *self._express_current, *self.pending]:
            if not item.future.done():
                item.future.set_exception(error)
        self._current, self._express_current, self.jobs = [], [], []
        self.queued_tokens = 0
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
        for lane, lane_task in self._tasks.items():
            if lane_task is task:
                self._start_lane(lane)
