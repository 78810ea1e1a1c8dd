"""The express lane: a small interactive request runs beside a long pass already in the model
instead of waiting for it; big, batch-priority and failing work behave as without it."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from rankserve.engine.batcher import Batcher
from rankserve.engine.tokenize import Encoded
from rankserve.errors import ModelFailure
from rankserve.metrics import Metrics
from tests.conftest import with_engine


def enc(n: int, tag: int) -> Encoded:
    return Encoded([tag] * n, None)


class HoldFirst:
    """A forward that holds its first pass until ``release`` and answers every other at once,
    recording each pass's tags and the thread it ran on; a pass holding tag ``fail_tag`` raises."""

    def __init__(self, fail_tag: int | None = None):
        self.calls: list[tuple[str, list[int]]] = []
        self.started, self.release = threading.Event(), threading.Event()
        self.fail_tag = fail_tag
        self._first = True
        self._lock = threading.Lock()

    def __call__(self, items):
        tags = [it.ids[0] for it in items]
        with self._lock:
            first, self._first = self._first, False
            self.calls.append((threading.current_thread().name, tags))
        if first:
            self.started.set()
            assert self.release.wait(30)
        if self.fail_tag in tags:
            raise RuntimeError("boom")
        return torch.tensor([float(t) for t in tags])


async def big_pass_in_model(b: Batcher, fwd: HoldFirst, tags: range) -> asyncio.Task:
    """Submit a big job and wait until its first pass holds the main lane."""
    task = asyncio.create_task(b.submit([enc(10, t) for t in tags]))
    await asyncio.get_running_loop().run_in_executor(None, fwd.started.wait, 30)
    return task


def run_with_big_pass(express: bool, small_jobs, fail_tag: int | None = None):
    """A 4-pass big job holds the main lane; ``small_jobs`` ((items, priority) each) are submitted
    during its first pass. Returns which small jobs finished while it was held, their results
    (or exceptions), the big job's result, the recorded passes and the express-pass count."""
    fwd = HoldFirst(fail_tag)
    metrics = Metrics()

    async def main():
        b = Batcher(fwd, max_batch_tokens=40, max_queue_items=1000, metrics=metrics, express=express)
        b.start()
        big = await big_pass_in_model(b, fwd, range(1000, 1016))
        smalls = [asyncio.create_task(b.submit(items, priority)) for items, priority in small_jobs]
        done, _ = await asyncio.wait(smalls, timeout=1.0)
        finished_while_held = [t in done for t in smalls]
        fwd.release.set()
        results = await asyncio.gather(*smalls, return_exceptions=True)
        big_out = await big
        await b.stop()
        return finished_while_held, results, big_out

    held, results, big_out = asyncio.run(main())
    return held, results, big_out, fwd.calls, metrics.express_passes._value.get()


def test_a_small_request_answers_while_a_long_pass_is_in_the_model():
    held, results, big_out, calls, express_passes = run_with_big_pass(True, [([enc(10, 1), enc(5, 2)], "interactive")])
    assert held == [True]  # answered while the big job's pass was still held in the model
    assert [int(x) for x in results[0]] == [1, 2]
    assert [int(x) for x in big_out] == list(range(1000, 1016))  # the big job whole and in order
    assert calls[1] == ("rankserve-express_0", [1, 2]) and express_passes == 1
    assert all(name.startswith("rankserve-model") for name, tags in calls if tags[0] >= 1000)


def test_without_the_express_lane_the_small_request_waits_for_the_pass():
    held, results, _, calls, express_passes = run_with_big_pass(False, [([enc(10, 1), enc(5, 2)], "interactive")])
    assert held == [False]
    assert [int(x) for x in results[0]] == [1, 2]
    assert express_passes == 0 and all(name.startswith("rankserve-model") for name, _ in calls)


def test_batch_priority_and_jobs_over_one_pass_wait_for_the_main_lane():
    over_one_pass = [enc(10, 200 + i) for i in range(5)]  # 5 x 10 > 40 tokens: not small
    held, results, _, calls, express_passes = run_with_big_pass(
        True, [([enc(10, 100)], "batch"), (over_one_pass, "interactive")]
    )
    assert held == [False, False] and express_passes == 0
    assert [int(x) for x in results[0]] == [100]
    assert [int(x) for x in results[1]] == list(range(200, 205))


def test_a_failing_express_pass_fails_only_its_job():
    held, results, big_out, _, express_passes = run_with_big_pass(True, [([enc(10, 7)], "interactive")], fail_tag=7)
    assert held == [True] and express_passes == 1
    assert isinstance(results[0], ModelFailure) and "boom" in str(results[0])
    assert [int(x) for x in big_out] == list(range(1000, 1016))


@pytest.mark.parametrize("express", [True, False])
def test_the_engine_uses_the_express_lane_on_cpu_unless_turned_off(bert_ce_dir, express):
    async def work(engine):
        result = await engine.rank("what is a cat", ["a cat is an animal", "the sky"], "END")
        return engine.batcher.express, result.scores

    used, scores = with_engine(bert_ce_dir, work, express_lane=express)
    assert used is express and len(scores) == 2 and np.isfinite(scores).all()
