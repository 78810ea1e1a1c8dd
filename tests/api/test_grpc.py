"""KServe V2 gRPC with the real ``tritonclient.grpc`` client against a live server on 127.0.0.1.

The server serves a tiny cross-encoder ("ce") and bi-encoder ("bi") over HTTP and gRPC at once;
every gRPC answer is compared with the HTTP route's answer for the same input.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import LiveServer, free_port, metric_sum, require

try:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException
except ImportError:  # pragma: no cover - the [dev] extra installs it
    tg = None

QUERY = "how do i list the files in a directory"
PASSAGES = [
    "the ls command lists directory contents",
    "paris is the capital of france",
    "bananas are rich in potassium",
    "df shows disk space usage",
]


@pytest.fixture(scope="module")
def server(bert_ce_dir, bert_bi_dir):
    require(tg is not None, "no tritonclient for the gRPC tests", "pip install 'tritonclient[grpc]'")
    port = free_port()
    with LiveServer(model=f"ce={bert_ce_dir},bi={bert_bi_dir}", grpc_port=port) as live:
        live.grpc = f"127.0.0.1:{port}"
        yield live


def texts(name: str, values: list[str]):
    tensor = tg.InferInput(name, [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object).reshape(-1, 1))
    return tensor


def rank(client, model: str, query: str, passages: list[str], **parameters):
    result = client.infer(
        model, [texts("query", [query] * len(passages)), texts("passage", passages)], parameters=parameters or None
    )
    return result.as_numpy("index").ravel().tolist(), result.as_numpy("logit").ravel().tolist(), result


def grpc_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_rerank_equals_the_http_route(server):
    client = tg.InferenceServerClient(server.grpc)
    order, logits, result = rank(client, "ce", QUERY, PASSAGES, truncate="END")
    http = httpx.post(
        server.url + "/v1/ranking",
        json={"model": "ce", "query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]},
    ).json()
    assert order == [r["index"] for r in http["rankings"]]
    assert logits == pytest.approx([r["logit"] for r in http["rankings"]], abs=1e-6)
    counts = result.as_numpy("token_count")
    assert counts.shape == (len(PASSAGES),) and counts.dtype == np.int32
    assert int(counts.sum()) == http["usage"]["total_tokens"]  # each pair's tokens, in ranked order
    assert result.as_numpy("index").shape == (len(PASSAGES), 1)


def test_embed_equals_the_http_route(server):
    client = tg.InferenceServerClient(server.grpc)
    result = client.infer("bi", [texts("text", PASSAGES[:3])], parameters={"dimensions": 16, "truncate": "END"})
    http = httpx.post(
        server.url + "/v1/embeddings", json={"model": "bi", "input": PASSAGES[:3], "dimensions": 16, "truncate": "END"}
    ).json()
    vectors = result.as_numpy("embeddings")
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, [d["embedding"] for d in http["data"]], rtol=0, atol=1e-6)
    assert int(result.as_numpy("token_count").sum()) == http["usage"]["total_tokens"]


def test_metadata_and_readiness(server):
    client = tg.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("ce") and client.is_model_ready("bi") and not client.is_model_ready("other")
    assert client.get_server_metadata().name == "rankserve"
    ce = client.get_model_metadata("ce")
    assert [(t.name, t.datatype, list(t.shape)) for t in ce.inputs] == [
        ("query", "BYTES", [-1, 1]),
        ("passage", "BYTES", [-1, 1]),
    ]
    assert [t.name for t in ce.outputs] == ["index", "logit", "token_count"]
    assert [t.name for t in client.get_model_metadata("bi").outputs] == ["embeddings", "token_count"]


def test_model_names_follow_nims_rule():
    from rankserve.api.grpc_service import grpc_name

    assert grpc_name("nvidia/llama-nemotron-rerank-1b-v2") == "nvidia_llama_nemotron_rerank_1b_v2"
    assert grpc_name("BAAI/bge-reranker-v2-m3") == "baai_bge_reranker_v2_m3"


@pytest.mark.parametrize(
    "case, code, words",
    [
        ("wrong model", "StatusCode.NOT_FOUND", "is not served here"),
        ("no passages", "StatusCode.INVALID_ARGUMENT", "at least one passage"),
        ("two queries", "StatusCode.INVALID_ARGUMENT", "one distinct query"),
        ("too long, NONE", "StatusCode.INVALID_ARGUMENT", "exceeds the maximum allowed"),
        ("embed on a reranker", "StatusCode.INVALID_ARGUMENT", "does not produce embeddings"),
        ("bad truncate", "StatusCode.INVALID_ARGUMENT", "parameter 'truncate'"),
    ],
)
def test_errors_carry_the_right_code_and_message(server, case, code, words):
    client = tg.InferenceServerClient(server.grpc)
    long = " ".join(["files"] * 600)
    calls = {
        "wrong model": lambda: rank(client, "nope", QUERY, PASSAGES),
        "no passages": lambda: client.infer("ce", [texts("query", [QUERY]), texts("passage", [])]),
        "two queries": lambda: client.infer("ce", [texts("query", [QUERY, "other"]), texts("passage", PASSAGES[:2])]),
        "too long, NONE": lambda: rank(client, "ce", QUERY, [long], truncate="NONE"),
        "embed on a reranker": lambda: client.infer("ce", [texts("text", ["hello"])]),
        "bad truncate": lambda: rank(client, "ce", QUERY, PASSAGES, truncate="MIDDLE"),
    }
    error = grpc_error(calls[case])
    assert error.status() == code and words in error.message(), (error.status(), error.message())
    if case == "too long, NONE":  # the same message as the HTTP route's
        http = httpx.post(
            server.url + "/v1/ranking",
            json={"model": "ce", "query": {"text": QUERY}, "passages": [{"text": long}], "truncate": "NONE"},
        )
        assert http.status_code == 400 and http.json()["error"]["message"] == error.message()
    assert tg.InferenceServerClient(server.grpc).is_server_ready()  # and the server keeps serving


def test_concurrent_grpc_and_http_share_one_batcher(server):
    """24 gRPC and 24 HTTP rerank calls at once: every answer equals the one-call answer, and the
    model ran fewer forward passes than requests (calls from both front ends were batched)."""
    client = tg.InferenceServerClient(server.grpc)
    expected_order, expected_logits, _ = rank(client, "ce", QUERY, PASSAGES)
    before = metric_sum(httpx.get(server.url + "/metrics").text, "rankserve_batch_size_count", model="ce")
    barrier = threading.Barrier(48)

    def via_grpc(_):
        own = tg.InferenceServerClient(server.grpc)
        barrier.wait()
        return rank(own, "ce", QUERY, PASSAGES)[:2]

    def via_http(_):
        barrier.wait()
        body = httpx.post(
            server.url + "/v1/ranking",
            timeout=60,
            json={"model": "ce", "query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]},
        ).json()
        return [r["index"] for r in body["rankings"]], [r["logit"] for r in body["rankings"]]

    with ThreadPoolExecutor(48) as pool:
        futures = [pool.submit(via_grpc, i) for i in range(24)] + [pool.submit(via_http, i) for i in range(24)]
        answers = [f.result(timeout=120) for f in futures]
    for order, logits in answers:
        assert order == expected_order and logits == pytest.approx(expected_logits, abs=1e-5)
    text = httpx.get(server.url + "/metrics").text
    passes = metric_sum(text, "rankserve_batch_size_count", model="ce") - before
    assert 0 < passes < 48
    assert metric_sum(text, "rankserve_requests_total", route="grpc ModelInfer", status="OK") >= 24


def test_api_key_and_full_queue(bert_ce_dir):
    require(tg is not None, "no tritonclient for the gRPC tests", "pip install 'tritonclient[grpc]'")
    port = free_port()
    with LiveServer(
        model=str(bert_ce_dir), served_model_name="org/CE-1", grpc_port=port, api_key="sesame", max_queue_items=3
    ):
        client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()  # health needs no key
        error = grpc_error(lambda: rank(client, "org_ce_1", QUERY, PASSAGES[:2]))
        assert error.status() == "StatusCode.UNAUTHENTICATED"
        key = {"authorization": "Bearer sesame"}
        answer = client.infer("org_ce_1", [texts("query", [QUERY] * 2), texts("passage", PASSAGES[:2])], headers=key)
        assert answer.as_numpy("index").shape == (2, 1)
        full = grpc_error(
            lambda: client.infer("org_ce_1", [texts("query", [QUERY] * 4), texts("passage", PASSAGES)], headers=key)
        )
        assert full.status() == "StatusCode.RESOURCE_EXHAUSTED" and "queue" in full.message()
