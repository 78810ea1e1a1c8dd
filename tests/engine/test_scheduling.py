"""Continuous, fair scheduling: each pass is formed from the work waiting at that moment; small and
interactive jobs go first, starved jobs are not forgotten, cancelled chunks never run."""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import pytest
import torch

from rankserve.engine import batcher as batcher_module
from rankserve.engine.batcher import Batcher, Job, WorkItem
from rankserve.engine.tokenize import Encoded
from rankserve.metrics import Metrics


def enc(n: int, tag: int) -> Encoded:
    return Encoded([tag] * n, None)


class Recorder:
    """A forward that returns each item's tag, records the tags of every pass, and can hold pass 1."""

    def __init__(self, hold_first: bool = True):
        self.calls: list[list[int]] = []
        self.started, self.release = threading.Event(), threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items):
        self.calls.append([it.ids[0] for it in items])
        self.started.set()
        assert self.release.wait(30)
        return torch.tensor([float(it.ids[0]) for it in items])


async def until(condition, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def started(rec: Recorder) -> None:
    await asyncio.get_running_loop().run_in_executor(None, rec.started.wait, 30)


def test_a_small_request_submitted_during_a_big_one_completes_first():
    rec = Recorder()
    finished: list[str] = []

    async def main():
        b = Batcher(rec, max_batch_tokens=40, max_queue_items=1000, metrics=Metrics())
        b.start()

        async def job(name, items, priority="interactive"):
            out = await b.submit(items, priority)
            finished.append(name)
            return out

        big_items = [enc(10, 1000 + i) for i in range(40)]  # 10 passes of 4
        big = asyncio.create_task(job("big", big_items))
        await started(rec)  # the big job's first pass is in the model
        small = asyncio.create_task(job("small", [enc(10, 1), enc(5, 2), enc(8, 3)]))
        await until(lambda: len(b.pending) == 36 + 3, "the small request to queue")
        rec.release.set()
        out_big, out_small = await big, await small
        await b.stop()
        return big_items, out_big, out_small

    big_items, out_big, out_small = asyncio.run(main())
    assert finished == ["small", "big"]
    # The very next pass holds the whole small job (topped up with a big item: 4 x 10 fits 40).
    assert rec.calls[1] == [1, 1004, 3, 2]
    assert sorted(t for call in rec.calls for t in call) == [1, 2, 3] + list(range(1000, 1040))
    # Answers come back whole and in request order, each row its own item's.
    assert [int(x) for x in out_small] == [1, 2, 3]
    assert [int(x) for x in out_big] == [e.ids[0] for e in big_items]


def test_batch_priority_yields_to_interactive_work():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_tokens=20, max_queue_items=1000, metrics=Metrics())
        b.start()
        first = asyncio.create_task(b.submit([enc(10, 1)]))
        await started(rec)
        # Equal sizes; the batch job arrives first but the interactive one goes first.
        bulk = asyncio.create_task(b.submit([enc(10, 20), enc(10, 21)], "batch"))
        await until(lambda: len(b.pending) == 2, "the batch job to queue")
        interactive = asyncio.create_task(b.submit([enc(10, 30), enc(10, 31)], "interactive"))
        await until(lambda: len(b.pending) == 4, "the interactive job to queue")
        rec.release.set()
        await asyncio.gather(first, bulk, interactive)
        await b.stop()

    asyncio.run(main())
    assert rec.calls == [[1], [30, 31], [20, 21]]


def test_a_starved_job_goes_first(monkeypatch):
    now = 100.0
    fresh = Job(deque(), priority=0, arrival=now, tokens=5, served=now)
    big_batch = Job(deque(), priority=1, arrival=now - 5, tokens=5000, served=now - 0.5)
    assert sorted([big_batch, fresh], key=lambda j: j.key(now)) == [fresh, big_batch]
    starving = Job(deque(), priority=1, arrival=now - 5, tokens=5000, served=now - batcher_module.STARVE_AFTER)
    assert sorted([fresh, starving], key=lambda j: j.key(now)) == [starving, fresh]


def test_big_jobs_progress_under_a_stream_of_small_ones(monkeypatch):
    """With small jobs always waiting, the big job still gets a pass once it has starved."""
    monkeypatch.setattr(batcher_module, "STARVE_AFTER", 0.0)  # every job starves at once: arrival order
    rec = Recorder(hold_first=False)

    async def main():
        b = Batcher(rec, max_batch_tokens=10, max_queue_items=1000, metrics=Metrics())
        big = [enc(10, 100 + i) for i in range(3)]
        smalls = [[enc(10, i)] for i in range(3)]
        tasks = [asyncio.create_task(b.submit(big))] + [asyncio.create_task(b.submit(s)) for s in smalls]
        await asyncio.sleep(0)  # all four jobs queued before the worker starts
        b.start()
        await asyncio.gather(*tasks)
        await b.stop()

    asyncio.run(main())
    # Starved jobs (all of them) go by when they were last served: big, then each small, then big again.
    assert rec.calls[0] == [100] and rec.calls[1:4] == [[0], [1], [2]] and rec.calls[4:] == [[101], [102]]


def test_a_cancelled_requests_remaining_chunks_are_dropped():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_tokens=20, max_queue_items=1000, metrics=Metrics())
        b.start()
        doomed = asyncio.create_task(b.submit([enc(10, 50 + i) for i in range(6)]))  # 3 passes of 2
        await started(rec)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        after = asyncio.create_task(b.submit([enc(10, 7)]))
        await until(lambda: len(b.pending) == 5, "the next request to queue")
        rec.release.set()
        assert [int(x) for x in await after] == [7]
        await until(lambda: b.depth == 0, "the queue to empty")
        tokens = b.queued_tokens
        await b.stop()
        return tokens

    assert asyncio.run(main()) == 0
    assert rec.calls == [[50, 51], [7]]  # the first chunk was running; the other two never ran


def test_next_batch_fills_the_budget_across_jobs_and_sorts_longest_first():
    async def main():
        b = Batcher(lambda items: torch.zeros(len(items)), max_batch_tokens=60, max_queue_items=100, metrics=Metrics())
        loop = asyncio.get_running_loop()
        for tag, lengths in ((1, [20, 20, 20]), (2, [5, 5]), (3, [30])):
            items = deque(WorkItem(enc(n, tag), loop.create_future()) for n in lengths)
            b.jobs.append(Job(items, 0, 0.0, sum(lengths), 1e18))
        return b.next_batch()

    batch = asyncio.run(main())
    # By remaining work: job 2 (10 tokens) gives both, job 3 (30) its one 30-token item (padded
    # 30 x 3 = 90 > 60 does not fit), job 1 (60) gives one 20 (20 x 3 = 60 fits).
    assert [(it.encoded.ids[0], len(it.encoded)) for it in batch] == [(1, 20), (2, 5), (2, 5)]
