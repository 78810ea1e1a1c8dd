"""Cohere/vLLM, TEI and NVIDIA-hosted rerank shapes: translations onto the same engine."""

from __future__ import annotations

import math

import pytest

QUERY = "How do I list files in a directory?"
DOCS = ["Bananas are rich in potassium.", "The ls command lists directory contents.", "Paris is in France."]


def nim(client, **extra):
    body = {"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS], **extra}
    return client.post("/v1/ranking", json=body).json()["rankings"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_cohere_shape_matches_nim_ranking(default_client, path):
    r = default_client.post(
        path,
        json={
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "query": QUERY,
            "documents": DOCS,
            "top_n": 2,
            "return_documents": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] and len(body["results"]) == 2
    ref = nim(default_client)
    assert [x["index"] for x in body["results"]] == [x["index"] for x in ref[:2]]
    # Bi-encoder: relevance_score is the cosine itself.
    assert body["results"][0]["relevance_score"] == pytest.approx(ref[0]["logit"], abs=1e-6)
    assert body["results"][0]["document"] == {"text": DOCS[1]}


def test_cohere_documents_as_objects_and_no_documents_by_default(default_client):
    r = default_client.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS]}).json()
    assert len(r["results"]) == 3 and "document" not in r["results"][0]


def test_cross_encoder_relevance_is_sigmoid_of_logit(ce_client):
    ref = nim(ce_client)
    cohere = ce_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"]
    tei = ce_client.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    raw = ce_client.post(
        "/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}
    ).json()
    for a, b, c, d in zip(ref, cohere, tei, raw):
        assert a["index"] == b["index"] == c["index"] == d["index"]
        sig = 1 / (1 + math.exp(-a["logit"]))
        assert b["relevance_score"] == pytest.approx(sig, abs=1e-6) and c["score"] == pytest.approx(sig, abs=1e-6)
        assert d["score"] == pytest.approx(a["logit"], abs=1e-6) and d["text"] == DOCS[d["index"]]


def test_tei_truncate_false_refuses_long_pairs(ce_client):
    r = ce_client.post("/rerank", json={"query": QUERY, "texts": ["list files " * 100], "truncate": False})
    assert r.status_code == 400 and "exceeds the maximum allowed 128 tokens" in r.json()["error"]["message"]


def test_compat_bad_input_is_422(default_client):
    assert default_client.post("/v1/rerank", json={"query": "", "documents": DOCS}).status_code == 422
    assert default_client.post("/rerank", json={"query": QUERY, "texts": []}).status_code == 422


def test_nvidia_hosted_route(bert_ce_dir):
    from conftest import app_client, wait_ready

    with app_client(model=str(bert_ce_dir), served_model_name="nvidia/llama-3.2-nv-rerankqa-1b-v2") as client:
        wait_ready(client)
        body = {
            "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
            "query": {"text": "q"},
            "passages": [{"text": "a"}, {"text": "b"}],
        }
        r = client.post("/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking", json=body)
        assert r.status_code == 200 and len(r.json()["rankings"]) == 2
        wrong = client.post("/v1/retrieval/nvidia/other-model/reranking", json=body)
        assert wrong.status_code == 400 and "other-model" in wrong.json()["error"]["message"]
