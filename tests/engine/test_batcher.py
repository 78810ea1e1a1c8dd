"""Batching correctness: budget cuts, ordering, cancellation, failures reach every waiter."""

from __future__ import annotations

import asyncio

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


def test_cancelled_request_items_are_dropped():
    calls = []
    started = asyncio.Event

    async def main():
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow_forward(items):
            asyncio.run_coroutine_threadsafe(_set(gate), loop)
            import time; time.sleep(0.2)
            return echo_forward(calls)(items)

        b = Batcher(slow_forward, max_batch_tokens=10, max_queue_items=1000, metrics=Metrics())
        b.start()
        first = asyncio.create_task(b.submit([enc(10, 1)]))
        await gate.wait()  # first batch is running; the next request waits in the queue
        doomed = asyncio.create_task(b.submit([enc(10, 2), enc(10, 3)]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert [int(x) for x in await first] == [1]
        with pytest.raises(asyncio.CancelledError):
            await doomed
        kept = await b.submit([enc(10, 4)])
        await b.stop()
        return kept

    async def _set(e):
        e.set()

    kept = run(main())
    assert [int(x) for x in kept] == [4]
    assert len(calls) == 2  # the cancelled request's two items never reached the model


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
