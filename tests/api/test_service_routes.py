"""Health, readiness, model listing and metrics."""

from __future__ import annotations

import threading
import uuid

from conftest import app_client, wait_ready

from rankserve.engine import engine as engine_module


def test_live(default_client):
    assert default_client.get("/v1/health/live").json() == {
        "object": "health.response",
        "message": "Service is live.",
        "status": "live",
    }


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
        assert (
            "unsupported architecture" in r.json()["message"] and "BertForSequenceClassification" in r.json()["message"]
        )


def test_models_lists_served_name_with_root(default_client):
    body = default_client.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == card["root"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"]


def test_served_model_name_env(monkeypatch, bert_ce_dir):
    from fastapi.testclient import TestClient

    from rankserve.api.app import create_app
    from rankserve.config import load_config

    env = {"NIM_MODEL_PATH": str(bert_ce_dir), "NIM_SERVED_MODEL_NAME": "my-reranker"}
    with TestClient(create_app(load_config(environ=env))) as client:
        wait_ready(client)
        assert client.get("/v1/models").json()["data"][0]["id"] == "my-reranker"
        r = client.post(
            "/v1/ranking", json={"model": "my-reranker", "query": {"text": "q"}, "passages": [{"text": "p"}]}
        )
        assert r.status_code == 200


def read_metrics(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /v1/metrics as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def test_metrics_count_requests_errors_batches_tokens():
    """Counters move by exactly what known requests did (a dedicated app: nothing else touches it)."""
    from tokenizers import Tokenizer

    from rankserve.models.model_dir import default_model_dir

    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    tag = uuid.uuid4().hex[:8]  # fresh passages: every one a cache miss the model computes
    rank_bodies = [
        {
            "query": {"text": f"how do i list files {tag}"},
            "passages": [{"text": f"ls lists files {tag}"}, {"text": f"paris {tag}"}],
        },
        {
            "query": {"text": f"capital of france {tag}"},
            "passages": [{"text": f"paris is the capital {tag} {i}"} for i in range(3)],
        },
        {"query": {"text": f"banana {tag}"}, "passages": [{"text": f"bananas are yellow {tag}"}]},
    ]
    embed_bodies = [{"input": [f"first text {tag}", f"second text {tag}"]}, {"input": f"one more {tag}"}]
    bad_rank = [{"query": {"text": ""}, "passages": []}, {"query": {"text": "q"}, "passages": []}]
    R, E = "/v1/ranking", "/v1/embeddings"
    with app_client() as client:
        wait_ready(client)
        before = read_metrics(client)
        usage, sequences = 0, 0
        for body in rank_bodies:
            r = client.post(R, json=body)
            assert r.status_code == 200, r.text
            usage += r.json()["usage"]["prompt_tokens"]
            sequences += 1 + len(body["passages"])  # the query and each (missing) passage
        for body in embed_bodies:
            r = client.post(E, json=body)
            assert r.status_code == 200, r.text
            usage += r.json()["usage"]["prompt_tokens"]
            sequences += len(body["input"]) if isinstance(body["input"], list) else 1
        for body in bad_rank:
            assert client.post(R, json=body).status_code == 422
        assert client.post(R, json={**rank_bodies[0], "model": "someone/else"}).status_code == 400
        middle = read_metrics(client)
        # The first request again: both passages now come from the cache; the model sees the query only.
        again = client.post(R, json=rank_bodies[0])
        assert again.status_code == 200
        after = read_metrics(client)

    def moved(name, a=before, b=middle, **labels):  # summed over series whose labels include ``labels``
        def total(m):
            return sum(v for (n, ls), v in m.items() if n == name and set(labels.items()) <= set(ls))

        return total(b) - total(a)

    n_rank, n_embed = len(rank_bodies), len(embed_bodies)
    assert moved("rankserve_requests_total", route=R, status="200") == n_rank
    assert moved("rankserve_requests_total", route=E, status="200") == n_embed
    assert moved("rankserve_requests_total", route=R, status="422") == len(bad_rank)
    assert moved("rankserve_request_errors_total", route=R, status="422") == len(bad_rank)
    assert moved("rankserve_requests_total", route=R, status="400") == 1
    assert moved("rankserve_request_errors_total", route=R, status="400") == 1
    assert moved("rankserve_request_errors_total", route=E, status="200") == 0  # successes are no errors
    assert moved("rankserve_request_latency_seconds_count", route=R) == n_rank + len(bad_rank) + 1
    assert moved("rankserve_request_latency_seconds_count", route=E) == n_embed
    # Every sequence went through exactly one forward pass; each small request made at least one batch.
    assert moved("rankserve_batch_size_sum") == sequences
    assert n_rank + n_embed <= moved("rankserve_batch_size_count") <= sequences
    # tokens_total counts what the model processed: with no cache hits, exactly the reported usage.
    assert moved("rankserve_tokens_total") == usage > 0
    assert moved("rankserve_passage_cache_misses_total") == sum(len(b["passages"]) for b in rank_bodies)
    assert moved("rankserve_passage_cache_hits_total") == 0
    # A repeated request: usage still counts the cached passages, the model only the query's tokens.
    query_tokens = len(tok.encode(rank_bodies[0]["query"]["text"]).ids)
    assert again.json()["usage"]["prompt_tokens"] == usage_of_first(tok, rank_bodies[0])
    assert moved("rankserve_tokens_total", middle, after) == query_tokens
    assert moved("rankserve_passage_cache_hits_total", middle, after) == 2
    assert moved("rankserve_batch_size_sum", middle, after) == 1
    assert moved("rankserve_requests_total", middle, after, route=R, status="200") == 1
    for name in ("rankserve_queue_depth", "rankserve_passage_cache_capacity"):  # engine series: by model
        assert (name, (("model", "sentence-transformers/all-MiniLM-L6-v2"),)) in after


def usage_of_first(tok, body) -> int:
    """The default bi-encoder's usage for a ranking request: query plus passage tokens, each encoded alone."""
    return len(tok.encode(body["query"]["text"]).ids) + sum(len(tok.encode(p["text"]).ids) for p in body["passages"])


def test_every_documented_request_example_works_as_sent(default_client):
    """Each POST route's request schema carries an example (the API docs' "Try it out" body); sent
    unchanged to the default model it answers 200. A route without one fails here."""
    spec = default_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    sent = 0
    for path, ops in spec["paths"].items():
        post = ops.get("post")
        if post is None or "{" in path:  # path parameters (the hosted NVIDIA route) have no default
            continue
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        examples = schemas[ref].get("examples")
        assert examples, f"{path}: {ref} has no example"
        r = default_client.post(path, json=examples[0])
        assert r.status_code == 200, (path, r.text)
        sent += 1
    assert sent >= 8  # /v1/ranking, /v1/embeddings, Cohere v1/v2, TEI rerank/embed, vLLM score x2
