"""Overload, deadlines, faults, auth and limits, seen over HTTP, driven by the batcher's test-only
fault hook (it runs in the model thread before each forward pass: here it holds or fails it)."""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time

import pytest
import torch
from conftest import app_client, metric_sum, wait_ready
from fastapi.testclient import TestClient

from rankserve.api.app import create_app
from rankserve.config import load_config

BODY = {"query": {"text": "list files"}, "passages": [{"text": "list files in a directory"}, {"text": "banana"}]}


def rank(client, body=BODY, **headers):
    return client.post("/v1/ranking", json=body, headers=headers)


def metric(client, name: str, **labels: str) -> float:
    return metric_sum(client.get("/v1/metrics").text, name, **labels)


def until(condition, what: str, timeout: float = 30) -> None:
    """Wait, bounded, for a state change made by another thread."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Gate:
    """Holds every forward pass until released; records the items each pass was given."""

    def __init__(self, batcher):
        self.batcher, self.started, self.release, self.calls = batcher, threading.Event(), threading.Event(), []
        batcher.fault = self

    def __call__(self, items):
        self.calls.append(len(items))
        self.started.set()
        assert self.release.wait(60)


@pytest.fixture
def ce(bert_ce_dir):
    def make(**overrides):
        return app_client(model=str(bert_ce_dir), warmup=False, **overrides)

    return make


@pytest.mark.parametrize(
    "limit,what",
    [
        ({"max_queue_requests": 2}, "requests"),
        ({"max_queue_items": 4}, "items"),
        ({"max_queue_tokens": 40, "max_request_tokens": 20}, "tokens"),
    ],
)
def test_full_queue_answers_503_at_once_and_admitted_requests_finish(ce, limit, what):
    with ce(**limit) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        wait_ready(client)
        batcher = client.app.state.engine.batcher
        gate = Gate(batcher)
        first = pool.submit(rank, client)  # 2 pairs, 10 + 6 tokens, held in the model
        assert gate.started.wait(30)
        second = pool.submit(rank, client)  # queued behind it
        until(lambda: batcher.requests == 2, "the second request to be queued")
        policy, tokenized = client.app.state.engine.policy, []
        real_pairs = policy.pairs
        policy.pairs = lambda *a: tokenized.append(a) or real_pairs(*a)
        refused = rank(client)
        # Full in requests or items: refused before tokenizing (cheap under overload); tokens need the count.
        assert len(tokenized) == (1 if what == "tokens" else 0)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded" and what in refused.json()["error"]["message"]
        gate.release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert first.result().json() == second.result().json()
        assert metric(client, "rankserve_rejections_total", reason="overloaded") == 1
        assert rank(client).status_code == 200  # capacity is back


def test_request_timeout_is_504_and_drops_the_queued_work(ce):
    # One lane: the second request must wait in the queue (the express lane would run it beside).
    with ce(request_timeout=0.3, express_lane=False) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        wait_ready(client)
        batcher = client.app.state.engine.batcher
        gate = Gate(batcher)
        held = pool.submit(rank, client)  # its batch is in the model when the deadline passes
        assert gate.started.wait(30)
        queued = pool.submit(rank, client, **{"X-Request-Id": "queued"})  # waits behind it, then times out
        for r in (held.result(), queued.result()):
            assert r.status_code == 504, r.text
            assert r.json()["error"]["type"] == "timeout" and "0.3 s" in r.json()["error"]["message"]
        gate.release.set()
        until(lambda: batcher.depth == 0 and batcher.queued_tokens == 0, "the queue to empty")
        assert gate.calls == [2]  # the queued request's two pairs never reached the model
        batcher.fault = None
        assert rank(client).status_code == 200


def test_a_failing_batch_fails_only_its_requests_then_serving_goes_on(ce):
    with ce() as client:
        wait_ready(client)
        batcher = client.app.state.engine.batcher
        faults = iter([torch.OutOfMemoryError("CUDA out of memory (simulated)"), RuntimeError("bad kernel")])

        def fail_twice(items):
            fault = next(faults, None)
            if fault is not None:
                raise fault

        batcher.fault = fail_twice
        oom, bad = rank(client), rank(client)
        assert oom.status_code == 500 and oom.json()["error"]["type"] == "model_error"
        assert "out of memory" in oom.json()["error"]["message"]
        assert bad.status_code == 500 and "bad kernel" in bad.json()["error"]["message"]
        ok = rank(client)
        assert ok.status_code == 200 and len(ok.json()["rankings"]) == 2
        assert client.get("/v1/health/ready").status_code == 200


class Crash(BaseException):
    """Not an Exception: escapes the per-batch handler and kills the worker loop, like a bug would."""


def test_worker_crash_restarts_then_a_dead_worker_fails_readiness_and_stops_the_server(bert_ce_dir):
    stopped = []
    config = load_config({"model": str(bert_ce_dir), "warmup": False}, environ={})
    with TestClient(create_app(config, on_fatal=stopped.append), raise_server_exceptions=False) as client:
        wait_ready(client)
        batcher = client.app.state.engine.batcher

        def crash(items):
            raise Crash("simulated worker death")

        batcher.fault = crash
        r = rank(client)
        assert r.status_code == 500 and "worker crashed" in r.json()["error"]["message"]
        until(lambda: metric(client, "rankserve_worker_restarts_total") == 1, "the restart")
        batcher.fault = None
        assert rank(client).status_code == 200  # the restarted loop serves
        assert stopped == [] and client.get("/v1/health/ready").status_code == 200

        batcher.max_restarts = 1  # the next crash is one too many
        batcher.fault = crash
        assert rank(client).status_code == 500
        until(lambda: stopped, "on_fatal")
        assert "crashed 2 times" in stopped[0]
        ready = client.get("/v1/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        refused = rank(client)
        assert refused.status_code == 503 and refused.headers["retry-after"]


def test_several_api_keys_and_a_key_file(ce, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("from-file-1\n\n  from-file-2  \n")
    with ce(api_key="alpha, beta", api_key_file=str(keys)) as client:
        wait_ready(client)
        for key in ("alpha", "beta", "from-file-1", "from-file-2"):
            assert rank(client, Authorization=f"Bearer {key}").status_code == 200, key
        for header in (
            {},
            {"Authorization": "Bearer gamma"},
            {"Authorization": "Bearer alpha,beta"},
            {"Authorization": "Basic alpha"},
            {"Authorization": "Bearer "},
        ):
            r = rank(client, **header)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", header
            assert r.json()["error"]["type"] == "authentication_error"
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/health/ready").status_code == 200 and client.get("/v1/health/live").status_code == 200
        assert client.get("/v1/metrics").status_code == 200


def test_empty_key_file_is_a_config_error(tmp_path):
    from rankserve.errors import ConfigError

    (tmp_path / "keys").write_text("\n \n")
    with pytest.raises(ConfigError, match="api_key_file"):
        load_config({"api_key_file": str(tmp_path / "keys")}, environ={})


def test_text_and_token_limits_are_413_naming_the_limit(ce):
    with ce(max_text_chars=40, max_request_tokens=20, max_queue_tokens=20) as client:
        wait_ready(client)
        long_text = {"query": {"text": "q"}, "passages": [{"text": "short"}, {"text": "x" * 41}]}
        r = rank(client, long_text)
        assert r.status_code == 413 and "passages[1] has 41 characters" in r.json()["error"]["message"]
        assert "40" in r.json()["error"]["message"] and r.json()["error"]["param"] == "passages.1"
        many = {"query": {"text": "list files"}, "passages": [{"text": "list files in a directory"}] * 3}
        r = rank(client, many)  # 3 pairs of 10 tokens = 30 > 20
        assert r.status_code == 413 and "30 tokens" in r.json()["error"]["message"]
        assert "max_request_tokens" in r.json()["error"]["message"]
        r = client.post("/rerank", json={"query": "q" * 41, "texts": ["a"]})
        assert r.status_code == 413 and "query[0]" in r.json()["error"]["message"]
        assert rank(client).status_code == 200


def test_request_id_is_echoed_or_generated(ce):
    with ce() as client:
        wait_ready(client)
        assert rank(client, **{"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
        generated = {rank(client).headers["x-request-id"] for _ in range(3)}
        assert len(generated) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", g) for g in generated)
        too_long = rank(client, **{"X-Request-Id": "x" * 200}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", too_long)
        error = client.post("/v1/ranking", json={}, headers={"X-Request-Id": "bad-one"})
        assert error.status_code == 422 and error.headers["x-request-id"] == "bad-one"


def test_queue_wait_and_batch_fill_are_measured_per_pass(ce):
    with ce() as client:
        wait_ready(client)
        mixed = {
            "query": {"text": "list files"},
            "passages": [{"text": "list files in a directory " * 4}, {"text": "banana"}],
        }
        for _ in range(3):
            assert rank(client, mixed).status_code == 200
        passes = metric(client, "rankserve_batch_size_count")
        assert passes >= 3
        assert metric(client, "rankserve_batch_fill_count") == passes
        fill = metric(client, "rankserve_batch_fill_sum") / passes
        assert 0.2 < fill < 1.0  # a 26-token and a 6-token pair padded to 26: (26 + 6) / 52
        assert metric(client, "rankserve_queue_wait_seconds_count") == metric(client, "rankserve_batch_size_sum")
        assert metric(client, "rankserve_queue_tokens") == 0 and metric(client, "rankserve_queue_depth") == 0
