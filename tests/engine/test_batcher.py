"""Batching correctness: budget cuts, ordering, cancellation, failures reach every waiter."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from rankserve.engine.batcher import Batcher, WorkItem, cut_batches
from rankserve.engine.tokenize import Encoded
from rankserve.errors import ModelFailure, Overloaded
from rankserve.metrics import Metrics


def enc(n: int, tag: int = 0) -> Encoded:
    return Encoded([tag] * n, None)


def test_cut_batches_respects_budget_and_sorts():
    loop = asyncio.new_event_loop()
    items = [WorkItem(enc(n), loop.create_future()) for n in (5, 50, 10, 40, 20, 30)]
    batches = cut_batches(items, max_batch_tokens=100)
    for b in batches:
        assert len(b[0].encoded) * len(b) <= 100 or len(b) == 1
        lengths = [len(it.encoded) for it in b]
        assert lengths == sorted(lengths, reverse=True)
    assert sorted(len(it.encoded) for b in batches for it in b) == [5, 10, 20, 30, 40, 50]
    assert [len(it.encoded) for it in batches[0]] == [50, 40]  # padded cost 50 x 2 = 100 fits exactly
    loop.close()


def test_cut_batches_oversized_item_alone():
    loop = asyncio.new_event_loop()
    items = [WorkItem(enc(500), loop.create_future()), WorkItem(enc(1), loop.create_future())]
    batches = cut_batches(items, max_batch_tokens=100)
    assert [len(b) for b in batches] == [1, 1]
    loop.close()


def run(coro):
    return asyncio.run(coro)


def echo_forward(calls):
    def forward(items):
        calls.append([len(i) for i in items])
        return torch.tensor([float(i.ids[0]) for i in items])

    return forward


def test_results_follow_request_order_across_concurrent_requests():
    calls = []

    async def main():
        b = Batcher(echo_forward(calls), max_batch_tokens=64, max_queue_items=1000, metrics=Metrics())
        b.start()
        reqs = [[enc((i * 7 + j) % 13 + 1, tag=100 * i + j) for j in range(10)] for i in range(5)]
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        await b.stop()
        return reqs, outs

    reqs, outs = run(main())
    for r, o in zip(reqs, outs):
        assert [int(x) for x in o] == [e.ids[0] for e in r]
    assert all(max(c) * len(c) <= 64 or len(c) == 1 for c in calls)


def test_a_request_fitting_one_budget_runs_in_one_batch():
    calls = []

    async def main():
        b = Batcher(echo_forward(calls), max_batch_tokens=1000, max_queue_items=1000, metrics=Metrics())
        b.start()
        await b.submit([enc(n, n) for n in (3, 9, 5, 7)])
        await b.stop()

    run(main())
    assert calls == [[9, 7, 5, 3]]


class GatedForward:
    """A forward pass that records each batch's tags (``ids[0]``) and holds its first call until released.

    ``started`` is set when the first batch reaches the model; that call then blocks (bounded) on
    ``release``, so everything submitted meanwhile queues up behind it.
    """

    def __init__(self):
        self.calls: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items):
        self.calls.append([i.ids[0] for i in items])
        if len(self.calls) == 1:
            self.started.set()
            if not self.release.wait(120):  # a safety net: the test always releases
                raise RuntimeError("the test never released the first batch")
        return torch.tensor([float(i.ids[0]) for i in items])


async def until(predicate, what: str, timeout: float = 10) -> None:
    """Yield to the event loop until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.001)


def test_concurrent_requests_share_one_forward_pass():
    forward = GatedForward()
    metrics = Metrics()
    reqs = [[enc(3 + j, tag=100 * i + j) for j in range(3)] for i in range(1, 5)]  # 4 requests x 3 items

    async def main():
        b = Batcher(forward, max_batch_tokens=1000, max_queue_items=1000, metrics=metrics)
        b.start()
        try:
            first = asyncio.create_task(b.submit([enc(4, tag=1)]))
            assert await asyncio.to_thread(forward.started.wait, 10), "the first batch never reached the model"
            others = [asyncio.create_task(b.submit(r)) for r in reqs]
            await until(lambda: len(b.pending) == 12, "all 4 requests to queue behind the held batch")
        finally:
            forward.release.set()
        outs = await asyncio.gather(first, *others)
        await b.stop()
        return outs

    outs = run(main())
    assert [int(x) for x in outs[0]] == [1]
    for r, o in zip(reqs, outs[1:]):
        assert [int(x) for x in o] == [e.ids[0] for e in r]  # each request gets its own rows back, in order
    # The held batch, then ONE forward pass holding all four queued requests' items (longest first).
    assert len(forward.calls) == 2, forward.calls
    assert forward.calls[0] == [1]
    assert sorted(forward.calls[1]) == sorted(e.ids[0] for r in reqs for e in r)
    assert {tag // 100 for tag in forward.calls[1]} == {1, 2, 3, 4}
    assert metrics.registry.get_sample_value("rankserve_batch_size_count") == 2
    assert metrics.registry.get_sample_value("rankserve_batch_size_sum") == 13


def test_cancelled_request_items_are_dropped():
    forward = GatedForward()

    async def main():
        # Budget 30, items of 10 tokens: three per batch, so dropped items would share a batch with kept ones.
        b = Batcher(forward, max_batch_tokens=30, max_queue_items=1000, metrics=Metrics())
        b.start()
        try:
            first = asyncio.create_task(b.submit([enc(10, 1)]))
            assert await asyncio.to_thread(forward.started.wait, 10), "the first batch never reached the model"
            doomed = asyncio.create_task(b.submit([enc(10, 2), enc(10, 3)]))
            survivor = asyncio.create_task(b.submit([enc(10, 5)]))
            await until(lambda: len(b.pending) == 3, "both requests to queue behind the held batch")
            doomed.cancel()  # the client left while its items wait in the queue
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert [it.future.cancelled() for it in b.pending] == [True, True, False]
        finally:
            forward.release.set()
        assert [int(x) for x in await first] == [1]
        assert [int(x) for x in await survivor] == [5]
        kept = await b.submit([enc(10, 4)])
        depth = b.depth
        await b.stop()
        return kept, depth

    kept, depth = run(main())
    assert [int(x) for x in kept] == [4]
    assert depth == 0
    # The cancelled request's two items never reached the model; the survivor queued with them ran alone.
    assert forward.calls == [[1], [5], [4]]


def test_forward_failure_fails_every_waiter_and_keeps_serving():
    state = {"fail": True}

    def forward(items):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("boom")
        return torch.zeros(len(items))

    async def main():
        b = Batcher(forward, max_batch_tokens=1000, max_queue_items=1000, metrics=Metrics())
        b.start()
        r1 = b.submit([enc(2), enc(3)])
        r2 = b.submit([enc(4)])
        results = await asyncio.gather(r1, r2, return_exceptions=True)
        after = await b.submit([enc(2)])
        await b.stop()
        return results, after

    results, after = run(main())
    assert all(isinstance(r, ModelFailure) and "boom" in r.message for r in results)
    assert len(after) == 1


def test_full_queue_is_overloaded():
    async def main():
        b = Batcher(lambda items: torch.zeros(len(items)), max_batch_tokens=10, max_queue_items=3, metrics=Metrics())
        with pytest.raises(Overloaded) as info:
            await b.submit([enc(1)] * 4)
        assert info.value.headers["Retry-After"]

    run(main())
