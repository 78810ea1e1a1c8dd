"""Batching seen from HTTP: concurrent requests get the scores they would get alone, the passage
cache serves repeats, and a client that disconnects has its queued work dropped."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest
from conftest import LiveServer, app_client, metric_sum, wait_ready

from rankserve.loadgen import make_requests


def metric(text: str, name: str) -> float:
    return metric_sum(text, name)


class GatedForward:
    """Wraps the engine's forward pass: records every batch and, once ``hold()`` is called, holds the
    next batch in the model (``started`` set) until ``release`` is set, so later requests queue up."""

    def __init__(self, real):
        self.real = real
        self.calls: list[list] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.holding = False

    def hold(self) -> None:
        self.calls.clear()
        self.holding = True

    def __call__(self, items):
        self.calls.append(list(items))
        if self.holding and not self.started.is_set():
            self.started.set()
            if not self.release.wait(180):  # a safety net: the test always releases
                raise RuntimeError("the test never released the held batch")
        return self.real(items)


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def query_of(pair) -> tuple[int, ...]:
    """The query tokens of a BERT pair ([CLS] query [SEP], token type 0): which request it came from."""
    return tuple(i for i, t in zip(pair.ids, pair.type_ids) if t == 0)


def test_concurrent_requests_share_forward_passes_and_equal_sequential(bert_ce_dir):
    bodies = make_requests(12, (3, 8), (2, 40), seed=3)
    # The main lane's batching on its own: the express lane would take these small requests beside
    # the held pass (tests/engine/test_express_lane.py covers that).
    with app_client(model=str(bert_ce_dir), max_batch_tokens=1 << 16, express_lane=False) as client:
        wait_ready(client)
        engine = client.app.state.engine
        forward = engine.batcher.forward = GatedForward(engine.batcher.forward)
        try:
            alone, request_of = [], {}
            for i, b in enumerate(bodies):
                forward.calls.clear()
                alone.append(client.post("/v1/ranking", json=b).json()["rankings"])
                assert [len(c) for c in forward.calls] == [len(b["passages"])]  # alone: one pass of its own
                request_of[query_of(forward.calls[0][0])] = i
            assert len(request_of) == len(bodies)  # distinct queries tell the requests apart

            # Hold request 0's pass in the model; the other 11 arrive and wait in the queue together.
            forward.hold()
            queued = sum(len(b["passages"]) for b in bodies[1:])
            with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
                post = lambda b: client.post("/v1/ranking", json=b)  # noqa: E731
                try:
                    held = pool.submit(post, bodies[0])
                    assert forward.started.wait(60), "request 0 never reached the model"
                    rest = [pool.submit(post, b) for b in bodies[1:]]
                    wait_until(lambda: len(engine.batcher.pending) == queued, f"{queued} pairs of 11 requests to queue")
                finally:
                    forward.release.set()  # before the pool waits for its threads
                responses = [held.result(60)] + [f.result(60) for f in rest]
        finally:
            forward.release.set()
    assert [r.status_code for r in responses] == [200] * len(bodies)
    # Two passes in all: request 0 alone, then one pass holding every pair of the 11 queued requests.
    requests_per_pass = [sorted({request_of[query_of(p)] for p in c}) for c in forward.calls]
    assert requests_per_pass == [[0], list(range(1, len(bodies)))], requests_per_pass
    assert [len(c) for c in forward.calls] == [len(bodies[0]["passages"]), queued]
    together = [r.json()["rankings"] for r in responses]
    for a, t in zip(alone, together):
        assert [x["index"] for x in a] == [x["index"] for x in t]
        assert [x["logit"] for x in a] == pytest.approx([x["logit"] for x in t], abs=1e-5)


def test_passage_cache_serves_repeated_passages(default_client):
    body = {
        "query": {"text": "cache probe query"},
        "passages": [{"text": f"cache probe passage number {i}"} for i in range(10)],
    }
    before = default_client.get("/v1/metrics").text
    first = default_client.post("/v1/ranking", json=body).json()
    mid = default_client.get("/v1/metrics").text
    second = default_client.post("/v1/ranking", json={**body, "query": {"text": "another query"}}).json()
    after = default_client.get("/v1/metrics").text
    hits = "rankserve_passage_cache_hits_total"
    misses = "rankserve_passage_cache_misses_total"
    assert metric(mid, misses) - metric(before, misses) == 10
    assert metric(after, hits) - metric(mid, hits) == 10 and metric(after, misses) == metric(mid, misses)
    assert len(first["rankings"]) == len(second["rankings"]) == 10
    # Cached vectors give the same scores as freshly computed ones.
    again = default_client.post("/v1/ranking", json=body).json()["rankings"]
    assert [x["index"] for x in again] == [x["index"] for x in first["rankings"]]
    assert [x["logit"] for x in again] == pytest.approx([x["logit"] for x in first["rankings"]], abs=1e-6)


def test_disconnected_client_work_is_dropped(bert_ce_dir):
    budget = 64
    with LiveServer(model=str(bert_ce_dir), max_batch_tokens=budget) as server:
        app = server.server.config.app
        engine = app.state.engine
        query, passage = "list files", "list files in a directory " * 3
        length = len(engine.policy.pairs(query, [passage], "END")[0])
        per_batch = budget // length  # equal-length pairs: this many share a pass within the budget
        assert 2 <= per_batch < 60, (length, per_batch)
        forward = engine.batcher.forward = GatedForward(engine.batcher.forward)
        forward.hold()
        try:
            body = json.dumps({"query": {"text": query}, "passages": [{"text": passage}] * 60}).encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                sock.sendall(
                    b"POST /v1/ranking HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                assert forward.started.wait(60), "the request never reached the model"
            # The socket is closed while the first batch is held in the model: the request's 60 items
            # are that batch plus the rest of its job. Wait until the server has answered 499 and every
            # item is cancelled, then release.
            items = [*engine.batcher._current, *engine.batcher.pending]
            assert len(engine.batcher._current) == per_batch and len(items) == 60
            closed = lambda: app.state.metrics.registry.get_sample_value(  # noqa: E731
                "rankserve_requests_total", {"route": "/v1/ranking", "status": "499"}
            )
            wait_until(lambda: closed() == 1, "the server to notice the disconnect (499)")
            wait_until(lambda: all(it.future.cancelled() for it in items), "the request's items to be cancelled")
            forward.release.set()
            ok = httpx.post(
                server.url + "/v1/ranking",
                json={"query": {"text": query}, "passages": [{"text": passage}] * 2},
                timeout=60,
            )
        finally:
            forward.release.set()
        assert ok.status_code == 200 and len(ok.json()["rankings"]) == 2  # the server still serves
        # The model saw the first batch only (it was running when the client left); none of the other
        # pairs ran, before or after the next request, which was answered in a pass of its own.
        assert [len(c) for c in forward.calls] == [per_batch, 2], [len(c) for c in forward.calls]
        assert engine.batcher.depth == 0 and engine.batcher.queued_tokens == 0


@pytest.mark.parametrize("express_lane", [False, True], ids=["main-lane", "express-lane"])
def test_small_request_during_a_big_one_is_answered_first_with_unbatched_scores(bert_ce_dir, express_lane):
    """Fair scheduling over HTTP: the big request's first pass is held; a small request sent then is
    answered before the big one, and both get exactly the scores each gets alone. Without the express
    lane it waits for the held pass and runs between the big one's later passes; with it, it is
    answered while the big one's pass is still held in the model."""
    big = {
        "query": {"text": "list files"},
        "passages": [{"text": f"list files in a directory number {i % 7} " * (1 + i % 3)} for i in range(48)],
    }
    small = {"query": {"text": "show disk space"}, "passages": [{"text": "show disk space usage"}, {"text": "banana"}]}
    with app_client(
        model=str(bert_ce_dir), max_batch_tokens=128, max_passages=64, warmup=False, express_lane=express_lane
    ) as client:
        wait_ready(client)
        alone = {name: client.post("/v1/ranking", json=body).json() for name, body in (("big", big), ("small", small))}
        batcher = client.app.state.engine.batcher
        forward = batcher.forward = GatedForward(batcher.forward)
        forward.hold()
        finished: list[str] = []

        def send(name, body):
            response = client.post("/v1/ranking", json=body)
            finished.append(name)
            return response

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            big_future = pool.submit(send, "big", big)
            assert forward.started.wait(60)
            small_future = pool.submit(send, "small", small)
            try:
                if express_lane:
                    small_future.result(60)  # answered beside the held pass
                    assert not big_future.done()
                else:
                    wait_until(
                        lambda: len(batcher.pending) > 0 and any(len(j.items) == 2 for j in batcher.jobs),
                        "the small request to queue",
                    )
            finally:
                forward.release.set()
            responses = {"big": big_future.result(), "small": small_future.result()}
    assert finished == ["small", "big"]
    assert len(forward.calls) > 3  # the big request ran in several passes, the small one between them
    for name in ("big", "small"):
        assert responses[name].status_code == 200
        got = {x["index"]: x["logit"] for x in responses[name].json()["rankings"]}
        ref = {x["index"]: x["logit"] for x in alone[name]["rankings"]}
        # The same passages scored in other batch shapes: equal to float32 rounding (GEMM shapes differ).
        assert got.keys() == ref.keys() and all(abs(got[i] - ref[i]) <= 1e-5 for i in ref)
        assert responses[name].json()["usage"] == alone[name]["usage"]
