"""Dynamic batching across requests: an asyncio admission queue, one model worker.

Work arrives as ``Encoded`` items (one pair or text each) with a future. The worker takes
everything pending as a *round*, sorts it by length, and cuts it into micro-batches whose padded
cost (longest x rows) stays under ``max_batch_tokens``; a request's items all enter one round, so
they never wait behind each other in separate rounds. Items whose future was cancelled (client
left) are skipped. A failing forward pass fails every item in that batch, never silently.
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
from rankserve.errors import ModelFailure, Overloaded
from rankserve.metrics import Metrics

log = logging.getLogger("rankserve")
Forward = Callable[[Sequence[Encoded]], torch.Tensor]


@dataclass(slots=True)
class WorkItem:
    encoded: Encoded
    future: asyncio.Future


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
    def __init__(self, forward: Forward, *, max_batch_tokens: int, max_queue_items: int, metrics: Metrics):
        self.forward = forward
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_items = max_queue_items
        self.metrics = metrics
        self.pending: list[WorkItem] = []
        self.in_flight = 0  # items taken into the current round, not yet answered
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankserve-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rankserve-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self.pending:
            if not item.future.done():
                item.future.set_exception(ModelFailure("server is shutting down"))
        self.pending.clear()
        self._thread.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self.pending) + self.in_flight

    async def submit(self, encoded: Sequence[Encoded]) -> list[torch.Tensor]:
        """Queue the items; resolve to one output row per item, in order."""
        if self.depth + len(encoded) > self.max_queue_items:
            raise Overloaded(
                f"server is at capacity ({self.depth} items queued, limit {self.max_queue_items}); retry shortly",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        items = [WorkItem(e, loop.create_future()) for e in encoded]
        self.pending.extend(items)
        self.metrics.queue_depth.set(self.depth)
        self._wake.set()
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        except asyncio.CancelledError:
            for it in items:
                it.future.cancel()
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                round_items, self.pending = self.pending, []
                round_items = [it for it in round_items if not it.future.done()]
                self.in_flight = len(round_items)
                for batch in cut_batches(round_items, self.max_batch_tokens):
                    live = [it for it in batch if not it.future.done()]
                    self.in_flight -= len(batch) - len(live)
                    if live:
                        await self._run_batch(loop, live)
                        self.in_flight -= len(live)
                    self.metrics.queue_depth.set(self.depth)
                self.in_flight = 0

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[WorkItem]) -> None:
        encoded = [it.encoded for it in batch]
        start = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._thread, self.forward, encoded)
        except Exception as exc:  # the model failed: every waiter in this batch hears about it
            log.exception("forward pass failed for a batch of %d", len(batch))
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(ModelFailure(f"model forward failed: {type(exc).__name__}: {exc}"))
            return
        self.metrics.forward_seconds.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(len(encoded[0]) * len(encoded))
        self.metrics.tokens.inc(sum(len(e) for e in encoded))
        for it, row in zip(batch, out):
            if not it.future.done():
                it.future.set_result(row)
