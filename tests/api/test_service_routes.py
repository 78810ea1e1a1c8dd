"""Health, readiness, model listing and metrics."""

from __future__ import annotations

import threading

from conftest import app_client, wait_ready
from rankserve.engine import engine as engine_module


def test_live(default_client):
    assert default_client.get("/v1/health/live").json() == {
        "object": "health.response", "message": "Service is live.", "status": "live"}


def test_ready_is_503_until_loaded(monkeypatch):
    gate = threading.Event()
    real_load = engine_module.Engine.load

    def slow_load(*args, **kwargs):
        gate.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine_module.Engine, "load", staticmethod(slow_load))
    with app_client() as client:
        assert client.get("/v1/health/ready").status_code == 503
        r = client.post("/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": "p"}]})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert client.get("/v1/health/live").status_code == 200
        gate.set()
        wait_ready(client)
        assert client.get("/v1/health/ready").json()["status"] == "ready"


def test_failed_load_reports_why(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    with app_client(model=str(tmp_path)) as client:
        for _ in range(200):
            r = client.get("/v1/health/ready")
            if "failed" in r.json()["message"]:
                break
            threading.Event().wait(0.05)
        assert r.status_code == 503
        assert "unsupported architecture" in r.json()["message"] and "BertForSequenceClassification" in r.json()["message"]


def test_models_lists_served_name_with_root(default_client):
    body = default_client.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == card["root"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"]


def test_served_model_name_env(monkeypatch, bert_ce_dir):
    from rankserve.api.app import create_app
    from rankserve.config import load_config
    from fastapi.testclient import TestClient

    env = {"NIM_MODEL_PATH": str(bert_ce_dir), "NIM_SERVED_MODEL_NAME": "my-reranker"}
    with TestClient(create_app(load_config(environ=env))) as client:
        wait_ready(client)
        assert client.get("/v1/models").json()["data"][0]["id"] == "my-reranker"
        r = client.post("/v1/ranking", json={"model": "my-reranker", "query": {"text": "q"}, "passages": [{"text": "p"}]})
        assert r.status_code == 200


def test_metrics_count_requests_errors_batches_tokens(default_client):
    default_client.post("/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": "p"}, {"text": "p2"}]})
    default_client.post("/v1/ranking", json={"query": {"text": ""}, "passages": []})
    text = default_client.get("/v1/metrics").text
    assert 'rankserve_requests_total{route="/v1/ranking",status="200"}' in text
    assert 'rankserve_request_errors_total{route="/v1/ranking",status="422"}' in text
    for name in ("rankserve_request_latency_seconds_bucket", "rankserve_queue_depth", "rankserve_batch_size_bucket",
                 "rankserve_tokens_total", "rankserve_passage_cache_hits_total", "rankserve_passage_cache_capacity"):
        assert name in text
    tokens = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("rankserve_tokens_total"))
    assert tokens > 0
