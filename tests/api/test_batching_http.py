"""Batching seen from HTTP: concurrent requests get the scores they would get alone, the passage
cache serves repeats, and a client that disconnects has its queued work dropped."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from conftest import LiveServer
from rankserve.loadgen import make_requests


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_concurrent_requests_equal_sequential(ce_client):
    bodies = make_requests(12, (3, 8), (2, 40), seed=3)  # ce_client allows 8 passages
    alone = [ce_client.post("/v1/ranking", json=b).json()["rankings"] for b in bodies]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: ce_client.post("/v1/ranking", json=b).json()["rankings"], bodies))
    for a, t in zip(alone, together):
        assert [x["index"] for x in a] == [x["index"] for x in t]
        assert [x["logit"] for x in a] == pytest.approx([x["logit"] for x in t], abs=1e-5)


def test_passage_cache_serves_repeated_passages(default_client):
    body = {"query": {"text": "cache probe query"},
            "passages": [{"text": f"cache probe passage number {i}"} for i in range(10)]}
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
    calls = []
    with LiveServer(model=str(bert_ce_dir), max_batch_tokens=64) as server:
        engine = server.server.config.app.state.engine
        real = engine.batcher.forward

        def slow(items):
            calls.append(len(items))
            time.sleep(0.05)
            return real(items)

        engine.batcher.forward = slow
        body = {"query": {"text": "list files"}, "passages": [{"text": "list files in a directory " * 8}] * 60}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + "/v1/ranking", json=body, timeout=0.3)
        time.sleep(1.5)
        done_after_disconnect = sum(calls)
        assert done_after_disconnect < 60  # most of the 60 pairs never reached the model
        time.sleep(0.5)
        assert sum(calls) == done_after_disconnect  # and nothing more runs later
        ok = httpx.post(server.url + "/v1/ranking", json={**body, "passages": body["passages"][:2]}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["rankings"]) == 2
