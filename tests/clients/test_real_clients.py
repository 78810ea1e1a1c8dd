"""The real client SDKs against a live rankserve on 127.0.0.1 (default model, no API key)."""

from __future__ import annotations

import warnings

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DOCS = [
    "Bananas are a good source of potassium.",
    "The ls command lists directory contents.",
    "Paris is the capital of France.",
]
QUERY = "How do I list files in a directory?"

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def base(live_default) -> str:
    return live_default.url + "/v1"


def reference(texts):
    from sentence_transformers import SentenceTransformer

    from rankserve.models.model_dir import default_model_dir

    return SentenceTransformer(str(default_model_dir()), device="cpu").encode(texts)


def served_embeddings(base, texts, input_type):
    """The server's own /v1/embeddings vectors (float), in input order."""
    r = httpx.post(
        base + "/embeddings",
        timeout=60,
        json={"input": texts, "model": MODEL, "input_type": input_type, "encoding_format": "float"},
    )
    assert r.status_code == 200, r.text
    return np.asarray([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])])


def served_rankings(base, query, docs):
    """The server's own /v1/ranking answer: [(index, logit)] best first."""
    r = httpx.post(
        base + "/ranking",
        timeout=60,
        json={"model": MODEL, "query": {"text": query}, "passages": [{"text": d} for d in docs]},
    )
    assert r.status_code == 200, r.text
    return [(x["index"], x["logit"]) for x in r.json()["rankings"]]


def models_listed(base) -> float:
    """How many GET /v1/models the server has answered 200 (its Prometheus counter)."""
    text = httpx.get(base + "/metrics", timeout=30).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "rankserve_requests_total"
        and s.labels.get("route") == "/v1/models"
        and s.labels.get("status") == "200"
    )


def assert_same_vectors(got, texts):
    got = np.asarray(got, dtype=np.float64)
    ref = reference(texts)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999


def test_openai_sdk_base64_default_and_float(base):
    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="unused")
    r = client.embeddings.create(input=DOCS, model=MODEL)  # SDK asks for base64 and decodes it
    assert [d.index for d in r.data] == [0, 1, 2] and r.usage.prompt_tokens > 0
    assert_same_vectors([d.embedding for d in r.data], DOCS)
    f = client.embeddings.create(
        input=DOCS[0], model=MODEL, encoding_format="float", extra_body={"input_type": "passage", "truncate": "END"}
    )
    np.testing.assert_allclose(f.data[0].embedding, r.data[0].embedding, atol=1e-7)
    f2 = client.embeddings.create(input=DOCS[0], model=MODEL, dimensions=64)
    assert len(f2.data[0].embedding) == 64


def test_openai_sdk_error_is_readable(base):
    import openai

    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(input=["x " * 1000], model=MODEL, extra_body={"truncate": "NONE"})
    assert "exceeds the maximum allowed 256 tokens" in str(info.value)


def test_langchain_embeddings(base):
    from langchain_nvidia_ai_endpoints import NVIDIAEmbeddings

    emb = NVIDIAEmbeddings(base_url=base, model=MODEL)
    assert_same_vectors([emb.embed_query(QUERY)], [QUERY])
    assert_same_vectors(emb.embed_documents(DOCS), DOCS)


def test_langchain_picks_model_from_models_list(base):
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIAEmbeddings, NVIDIARerank

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb, rr = NVIDIAEmbeddings(base_url=base), NVIDIARerank(base_url=base)
    assert emb.model == rr.model == MODEL
    np.testing.assert_allclose([emb.embed_query(QUERY)], served_embeddings(base, [QUERY], "query"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb.embed_documents(DOCS), served_embeddings(base, DOCS, "passage"), rtol=0, atol=1e-6)
    out = rr.compress_documents(query=QUERY, documents=[Document(page_content=d) for d in DOCS])
    served = served_rankings(base, QUERY, DOCS)
    assert [d.page_content for d in out] == [DOCS[i] for i, _ in served]
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in out], [x for _, x in served], rtol=0, atol=1e-5)


def test_langchain_rerank(base):
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    rr = NVIDIARerank(base_url=base, model=MODEL, top_n=2)
    out = rr.compress_documents(query=QUERY, documents=[Document(page_content=d) for d in DOCS])
    assert [d.page_content for d in out][0] == DOCS[1] and len(out) == 2
    scores = [d.metadata["relevance_score"] for d in out]
    assert scores == sorted(scores, reverse=True)


def test_llama_index_embeddings(base):
    from llama_index.embeddings.nvidia import NVIDIAEmbedding

    emb = NVIDIAEmbedding(base_url=base, model=MODEL)
    assert_same_vectors([emb.get_query_embedding(QUERY)], [QUERY])
    assert_same_vectors(emb.get_text_embedding_batch(DOCS), DOCS)


def test_llama_index_embedding_without_model(base):
    """No ``model``: NVIDIAEmbedding asks GET /v1/models, picks the served id, and its vectors are the
    server's own /v1/embeddings vectors (query -> input_type query, texts -> passage)."""
    from llama_index.embeddings.nvidia import NVIDIAEmbedding

    listed = models_listed(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Default model is set as: ..."
        emb = NVIDIAEmbedding(base_url=base)
    assert models_listed(base) > listed
    assert emb.model == MODEL
    q = emb.get_query_embedding(QUERY)
    assert len(q) == 384
    np.testing.assert_allclose([q], served_embeddings(base, [QUERY], "query"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        emb.get_text_embedding_batch(DOCS), served_embeddings(base, DOCS, "passage"), rtol=0, atol=1e-6
    )


def test_llama_index_rerank_without_model(base):
    """No ``model``: NVIDIARerank asks GET /v1/models, and its node order and scores are the server's
    own /v1/ranking rankings and logits."""
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.nvidia_rerank import NVIDIARerank

    listed = models_listed(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rr = NVIDIARerank(base_url=base)
    assert models_listed(base) > listed
    assert rr.model == MODEL
    nodes = rr.postprocess_nodes([NodeWithScore(node=TextNode(text=d)) for d in DOCS], query_str=QUERY)
    served = served_rankings(base, QUERY, DOCS)
    assert served[0][0] == 1 and len(nodes) == len(DOCS)
    assert [n.node.text for n in nodes] == [DOCS[i] for i, _ in served]
    np.testing.assert_allclose([n.score for n in nodes], [x for _, x in served], rtol=0, atol=1e-5)


def test_llama_index_rerank(base):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.nvidia_rerank import NVIDIARerank

    rr = NVIDIARerank(base_url=base, model=MODEL, top_n=2)
    nodes = rr.postprocess_nodes([NodeWithScore(node=TextNode(text=d)) for d in DOCS], query_str=QUERY)
    assert [n.node.text for n in nodes][0] == DOCS[1] and len(nodes) == 2


def test_llama_index_refuses_unlisted_model(base):
    """LlamaIndex checks /v1/models first: only the served id is accepted."""
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.nvidia_rerank import NVIDIARerank

    with pytest.raises(ValueError, match="not-served/model"):
        NVIDIARerank(base_url=base, model="not-served/model").postprocess_nodes(
            [NodeWithScore(node=TextNode(text=DOCS[0]))], query_str=QUERY
        )
