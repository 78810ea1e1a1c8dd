"""/v1/ranking against the real default model and a tiny cross-encoder, in-process."""

from __future__ import annotations

import pytest

from conftest import app_client, wait_ready

# (query, relevant passage, irrelevant passages): real English, judged by the real default model.
CASES = [
    ("How do I list the files in a directory?",
     "The ls command lists the contents of a directory.",
     ["Bananas are a good source of potassium.", "Paris is the capital of France.", "The stock market fell today."]),
    ("What is the capital of France?",
     "Paris is the capital and largest city of France.",
     ["The ls command lists the contents of a directory.", "Cats sleep for most of the day.", "Python is a programming language."]),
    ("Which fruit is rich in potassium?",
     "Bananas are a good source of potassium.",
     ["Paris is the capital of France.", "A compiler translates source code.", "The ocean covers most of Earth."]),
    ("How do I compress a file on Linux?",
     "gzip compresses files using the Lempel-Ziv coding.",
     ["The Eiffel Tower is in Paris.", "Bananas are yellow when ripe.", "Football is played with eleven players."]),
]


def rank(client, query, passages, **extra):
    body = {"query": {"text": query}, "passages": [{"text": p} for p in passages], **extra}
    return client.post("/v1/ranking", json=body)


@pytest.mark.parametrize("query,relevant,others", CASES)
def test_default_model_ranks_relevant_first(default_client, query, relevant, others):
    passages = others[:1] + [relevant] + others[1:]  # relevant one not first in the request
    r = rank(default_client, query, passages)
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    assert rankings[0]["index"] == 1
    assert sorted(x["index"] for x in rankings) == list(range(len(passages)))
    logits = [x["logit"] for x in rankings]
    assert logits == sorted(logits, reverse=True)


def test_cross_encoder_scores_match_engine_order(ce_client):
    passages = ["list files in a directory", "banana fruit", "show disk space usage", "paris"]
    r = rank(ce_client, "list files", passages, model="tiny-ce")
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    assert len(rankings) == 4 and len({x["logit"] for x in rankings}) == 4
    # Same passages in reverse order: same logits per passage, indices follow the request.
    r2 = rank(ce_client, "list files", passages[::-1]).json()["rankings"]
    by_text = {passages[x["index"]]: x["logit"] for x in rankings}
    by_text2 = {passages[::-1][x["index"]]: x["logit"] for x in r2}
    for text in passages:
        assert by_text[text] == pytest.approx(by_text2[text], abs=1e-5)


@pytest.mark.parametrize("field", ["top_k", "top_n"])
def test_top_k_returns_best_entries(default_client, field):
    query, relevant, others = CASES[0]
    full = rank(default_client, query, [relevant, *others]).json()["rankings"]
    cut = rank(default_client, query, [relevant, *others], **{field: 2}).json()["rankings"]
    assert cut == full[:2]


def test_unknown_fields_are_ignored(default_client):
    r = rank(default_client, "q", ["p"], foo="bar", extra={"x": 1})
    assert r.status_code == 200


def test_model_mismatch_names_both(default_client):
    r = rank(default_client, "q", ["p"], model="nvidia/llama-3.2-nv-rerankqa-1b-v2")
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "nvidia/llama-3.2-nv-rerankqa-1b-v2" in msg and "sentence-transformers/all-MiniLM-L6-v2" in msg


@pytest.mark.parametrize("body,where", [
    ({"query": {"text": ""}, "passages": [{"text": "p"}]}, "query.text"),
    ({"query": {"text": "   "}, "passages": [{"text": "p"}]}, "query.text"),
    ({"query": {"text": "q"}, "passages": []}, "passages"),
    ({"query": {"text": 5}, "passages": [{"text": "p"}]}, "query.text"),
    ({"query": {"text": "q"}, "passages": [{"text": ["p"]}]}, "passages.0.text"),
    ({"query": {"text": "q"}, "passages": [{"text": "p"}], "truncate": "START"}, "truncate"),
    ({"query": "q", "passages": [{"text": "p"}]}, "query"),
    ({"passages": [{"text": "p"}]}, "query"),
    ({"query": {"text": "q"}, "passages": [{"text": "p"}], "top_k": 0}, "top_k"),
])
def test_schema_errors_are_422_with_field(default_client, body, where):
    r = default_client.post("/v1/ranking", json=body)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["param"] == where
    assert isinstance(body["detail"], list) and body["detail"][0]["loc"][0] == "body"


def test_non_json_body_is_422_json(default_client):
    r = default_client.post("/v1/ranking", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"


def test_too_many_passages_is_400(ce_client):
    r = rank(ce_client, "q", ["p"] * 9)
    assert r.status_code == 400
    assert "9 passages exceed the limit of 8" in r.json()["error"]["message"]


def test_truncate_none_too_long_names_passage_count_and_limit(ce_client):
    long = "list files " * 100  # > 128 tokens with the query
    r = rank(ce_client, "list files", ["short", long], truncate="NONE")
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "passages[1]" in msg and "128" in msg and str(3 + 2 + 200) in msg


def test_truncate_end_is_default_and_scores_long_passages(ce_client):
    long = "list files " * 100
    r = rank(ce_client, "list files", ["short", long])
    assert r.status_code == 200 and len(r.json()["rankings"]) == 2


def test_server_keeps_serving_after_errors(default_client):
    for bad in ({"query": {"text": ""}}, {"query": {"text": "q"}, "passages": [{"text": "x " * 2000}], "truncate": "NONE"}):
        assert default_client.post("/v1/ranking", json=bad).status_code in (400, 422)
    assert rank(default_client, "q", ["p"]).status_code == 200


def test_body_size_limit_is_413():
    with app_client(max_request_bytes=200) as client:
        wait_ready(client)
        r = rank(client, "q", ["p" * 500])
        assert r.status_code == 413 and "exceeds 200 bytes" in r.json()["error"]["message"]
        assert rank(client, "q", ["p"]).status_code == 200


def test_api_key_when_configured():
    with app_client(api_key="s3cret") as client:
        wait_ready(client)
        assert rank(client, "q", ["p"]).status_code == 401
        assert client.post("/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": "p"}]},
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.post("/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": "p"}]},
                         headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/v1/health/live").status_code == 200  # health stays open


def test_any_bearer_accepted_without_key(default_client):
    for token in ("NO_API_KEY_PROVIDED", "**********", ""):
        r = default_client.post("/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": "p"}]},
                                headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
