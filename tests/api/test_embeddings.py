"""/v1/embeddings: NIM/OpenAI shapes, prefixes, Matryoshka, base64, truncation, bad input."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import app_client, wait_ready

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def embed(client, **body):
    return client.post("/v1/embeddings", json={"model": MODEL, **body})


def test_shape_order_usage(default_client):
    r = embed(default_client, input=["first text", "second, longer text here"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    for d in body["data"]:
        assert np.linalg.norm(d["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_vectors_equal_sentence_transformers(default_client):
    from sentence_transformers import SentenceTransformer

    from rankserve.models.model_dir import default_model_dir

    texts = ["How do I list files?", "The ls command lists directory contents.", "Bananas are yellow."]
    got = np.array([d["embedding"] for d in embed(default_client, input=texts).json()["data"]])
    ref = SentenceTransformer(str(default_model_dir()), device="cpu").encode(texts)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999


def test_single_string_input(default_client):
    r = embed(default_client, input="just one")
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_base64_is_little_endian_float32(default_client):
    floats = embed(default_client, input=["hello"]).json()["data"][0]["embedding"]
    b64 = embed(default_client, input=["hello"], encoding_format="base64").json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert decoded.shape == (384,)
    np.testing.assert_array_equal(decoded, np.array(floats, dtype=np.float32))


def test_matryoshka_dimensions_renormalized(default_client):
    full = np.array(embed(default_client, input=["hello"]).json()["data"][0]["embedding"])
    cut = np.array(embed(default_client, input=["hello"], dimensions=128).json()["data"][0]["embedding"])
    assert cut.shape == (128,)
    np.testing.assert_allclose(cut, full[:128] / np.linalg.norm(full[:128]), atol=1e-6)
    r = embed(default_client, input=["hello"], dimensions=1000)
    assert r.status_code == 400 and "1..384" in r.json()["error"]["message"]


def test_truncate_modes(default_client):
    long = "word " * 400  # > 256 tokens
    r = embed(default_client, input=["ok", long], truncate="NONE")
    assert r.status_code == 400
    assert "input[1]" in r.json()["error"]["message"] and "256" in r.json()["error"]["message"]
    start = embed(default_client, input=["alpha " + long + " omega"], truncate="START").json()["data"][0]["embedding"]
    end = embed(default_client, input=["alpha " + long + " omega"], truncate="END").json()["data"][0]["embedding"]
    assert not np.allclose(start, end)  # START keeps the end, END keeps the start


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"input": []}, 400, "empty list"),
        ({"input": [""]}, 400, "input[0] is an empty string"),
        ({"input": ["ok", 3]}, 422, "input"),
        ({"input": [1, 2, 3]}, 400, "token ids"),
        ({"input": [[1, 2], [3]]}, 400, "token ids"),
        ({"input": "x", "input_type": "document"}, 422, "input_type"),
        ({"input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
        ({"input": "x", "dimensions": 0}, 422, "dimensions"),
        ({"input": "x", "model": "text-embedding-3-small"}, 400, "not served here"),
    ],
)
def test_bad_input(default_client, body, status, fragment):
    r = default_client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"] or fragment == r.json()["error"]["param"]


def test_too_many_inputs():
    with app_client(max_inputs=2) as client:
        wait_ready(client)
        r = client.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
        assert r.status_code == 400 and "3 inputs exceed the limit of 2" in r.json()["error"]["message"]


def test_reranker_has_no_embeddings(ce_client):
    r = ce_client.post("/v1/embeddings", json={"input": ["x"]})
    assert r.status_code == 400 and "reranker" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def asymmetric_client(bert_bi_dir):
    with app_client(
        model=str(bert_bi_dir), served_model_name="tiny-embed", query_prefix="query: ", passage_prefix="passage: "
    ) as client:
        wait_ready(client)
        yield client


def test_asymmetric_model_requires_input_type(asymmetric_client):
    r = asymmetric_client.post("/v1/embeddings", json={"input": ["x"]})
    assert r.status_code == 400 and "input_type" in r.json()["error"]["message"]


def test_input_type_adds_prefix_and_model_suffix_selects_it(asymmetric_client, bert_bi_dir):
    """input_type=query embeds "query: " + text, passage "passage: " + text: the vectors equal
    sentence-transformers' for those literal strings from the same directory (cosine >= 0.99999,
    max abs diff <= 1e-5; measured ~1e-7)."""
    from sentence_transformers import SentenceTransformer

    def vec(**body):
        r = asymmetric_client.post("/v1/embeddings", json={"input": ["list files"], **body})
        assert r.status_code == 200, r.text
        return np.array(r.json()["data"][0]["embedding"])

    q, p = vec(input_type="query"), vec(input_type="passage")
    ref_q, ref_p, ref_bare = SentenceTransformer(str(bert_bi_dir), device="cpu").encode(
        ["query: list files", "passage: list files", "list files"]
    )
    for got, ref in ((q, ref_q), (p, ref_p)):
        cos = float(got @ ref / np.linalg.norm(got) / np.linalg.norm(ref))
        print(f"HTTP vs sentence-transformers: cosine {cos:.8f}, max abs diff {np.abs(got - ref).max():.2e}")
        assert cos >= 0.99999
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # The check can fail: the three strings embed differently (the prefix is not a no-op).
    assert np.abs(ref_q - ref_p).max() > 1e-2 and np.abs(ref_q - ref_bare).max() > 1e-2
    np.testing.assert_allclose(vec(model="tiny-embed-query"), q, atol=1e-6)
    np.testing.assert_allclose(vec(model="tiny-embed-passage"), p, atol=1e-6)
    usage_q = asymmetric_client.post("/v1/embeddings", json={"input": ["list files"], "input_type": "query"}).json()[
        "usage"
    ]
    assert usage_q["prompt_tokens"] == 2 + 2 + 2  # [CLS] query : list files [SEP]
