"""vLLM's /score, TEI's /embed and /info, NIM's /v1/metadata and /v1/version: each answer checked
against rankserve's own routes on the same model (same engine, so the numbers must agree)."""

from __future__ import annotations

import math

import pytest

from rankserve import __version__

QUERY = "how do I list the files in a directory"
DOCS = ["ls lists directory contents", "bananas are yellow", "find searches for files", "paris is in france"]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def ranking_logits(client, query: str, docs: list[str]) -> tuple[list[float], int]:
    r = client.post("/v1/ranking", json={"query": {"text": query}, "passages": [{"text": d} for d in docs]})
    assert r.status_code == 200, r.text
    by_index = {x["index"]: x["logit"] for x in r.json()["rankings"]}
    return [by_index[i] for i in range(len(docs))], r.json()["usage"]["total_tokens"]


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_vllm_score_one_to_many(ce_client, path):
    r = ce_client.post(path, json={"model": "tiny-ce", "text_1": QUERY, "text_2": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny-ce" and body["id"].startswith("score-")
    assert [d["index"] for d in body["data"]] == list(range(len(DOCS)))  # input order, not sorted
    assert all(d["object"] == "score" for d in body["data"])
    logits, tokens = ranking_logits(ce_client, QUERY, DOCS)
    assert [d["score"] for d in body["data"]] == pytest.approx([sigmoid(x) for x in logits], abs=1e-6)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == tokens


def test_vllm_score_pairs_by_position(ce_client):
    queries = [QUERY, "yellow fruit", QUERY]
    r = ce_client.post("/v1/score", json={"text_1": queries, "text_2": DOCS[:3]})
    assert r.status_code == 200, r.text
    got = [d["score"] for d in r.json()["data"]]
    expected = [sigmoid(ranking_logits(ce_client, q, [d])[0][0]) for q, d in zip(queries, DOCS[:3])]
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[0] != got[1]  # different queries really paired


@pytest.mark.parametrize(
    "body, param",
    [
        ({"text_1": ["a", "b"], "text_2": ["x", "y", "z"]}, "text_2"),
        ({"text_1": [], "text_2": ["x"]}, "text_1"),
        ({"text_1": "a", "text_2": ["x"], "truncate_prompt_tokens": 5}, "truncate_prompt_tokens"),
        ({"text_1": "a", "text_2": ["x"], "model": "other"}, "model"),
    ],
)
def test_vllm_score_errors_name_the_field(ce_client, body, param):
    r = ce_client.post("/score", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_tei_embed_equals_openai_embeddings(default_client):
    texts = ["hello world", "the cat sat on the mat"]
    tei = default_client.post("/embed", json={"inputs": texts})
    assert tei.status_code == 200, tei.text
    openai = default_client.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"}).json()["data"]
    import numpy as np

    np.testing.assert_allclose(tei.json(), [d["embedding"] for d in openai], rtol=0, atol=1e-7)
    single = default_client.post("/embed", json={"inputs": "hello world"})
    np.testing.assert_allclose(single.json(), [tei.json()[0]], rtol=0, atol=1e-7)
    assert math.isclose(sum(v * v for v in tei.json()[0]), 1.0, abs_tol=1e-5)


def test_tei_embed_truncation_and_refusals(default_client):
    long_text = "word " * 2000
    assert default_client.post("/embed", json={"inputs": long_text}).status_code == 400  # TEI default: no truncation
    for direction in ("Right", "Left"):
        r = default_client.post(
            "/embed", json={"inputs": long_text, "truncate": True, "truncation_direction": direction}
        )
        assert r.status_code == 200 and len(r.json()[0]) == 384
    assert (
        default_client.post("/embed", json={"inputs": "x", "normalize": False}).json()["error"]["param"] == "normalize"
    )
    assert default_client.post("/embed", json={"inputs": "x", "prompt_name": "nope"}).status_code == 400
    assert default_client.post("/embed", json={"inputs": []}).json()["error"]["param"] == "inputs"


def test_tei_info_describes_the_model(default_client, ce_client):
    info = default_client.get("/info").json()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["max_input_length"] == 256
    assert info["version"] == __version__ and info["model_dtype"] == "float32"
    assert "reranker" in ce_client.get("/info").json()["model_type"]


def test_nim_metadata_and_version(ce_client):
    meta = ce_client.get("/v1/metadata").json()
    assert [m["shortName"] for m in meta["modelInfo"]] == ["tiny-ce"]
    assert meta["modelInfo"][0]["modelUrl"].startswith("file://") and meta["version"] == __version__
    assert set(meta) >= {"assetInfo", "licenseInfo", "modelInfo", "repository_override", "version"}
    assert ce_client.get("/v1/version").json() == {"release": __version__, "api": "1.0.0"}
