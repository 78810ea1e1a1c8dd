"""rankserve.Client / AsyncClient against a live server on 127.0.0.1 (the default model), and the
503 retry rule against a scripted transport."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rankserve import AsyncClient, Client, ClientError, Ranking

QUERY = "how do I list the files in a directory"
PASSAGES = ["bananas are yellow", "ls lists directory contents", "paris is the capital of france"]


def test_rank_embed_models_health_match_the_http_api(live_default):
    with Client(live_default.url) as client:
        rankings = client.rank(QUERY, PASSAGES)
        assert all(isinstance(r, Ranking) for r in rankings)
        assert [r.text for r in rankings] == [PASSAGES[r.index] for r in rankings]
        assert rankings[0].text == PASSAGES[1]  # the ls passage wins
        raw = httpx.post(
            live_default.url + "/v1/ranking",
            timeout=60,
            json={"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]},
        ).json()
        assert [(r.index, r.logit) for r in rankings] == [(r["index"], r["logit"]) for r in raw["rankings"]]
        assert len(client.rank(QUERY, PASSAGES, top_n=1)) == 1
        vectors = client.embed(["hello", "world"], dimensions=128)
        assert len(vectors) == 2 and len(vectors[0]) == 128
        assert client.embed("hello")[0][:128] != vectors[0]  # the full 384-d vector, not the cut one
        assert client.models() == ["sentence-transformers/all-MiniLM-L6-v2"]
        assert client.health()["status"] == "ready"


def test_errors_carry_status_message_and_param(live_default):
    with Client(live_default.url) as client:
        with pytest.raises(ClientError) as caught:
            client.rank(QUERY, PASSAGES, model="not-served")
    assert caught.value.status == 400 and caught.value.param == "model"
    assert "not served here" in caught.value.message


def test_async_client(live_default):
    async def run():
        async with AsyncClient(live_default.url) as client:
            return await asyncio.gather(client.rank(QUERY, PASSAGES), client.embed("hello"), client.models())

    rankings, vectors, models = asyncio.run(run())
    assert rankings[0].text == PASSAGES[1] and len(vectors[0]) == 384 and models


def scripted(statuses: list[int], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses[min(len(seen), len(statuses)) - 1]
        if status == 503:
            return httpx.Response(
                503, headers={"Retry-After": "0"}, json={"error": {"message": "at capacity", "type": "overloaded"}}
            )
        return httpx.Response(200, json={"rankings": [{"index": 0, "logit": 1.5}], "usage": {}})

    return httpx.MockTransport(handler)


def test_503_is_retried_as_retry_after_says_then_raised():
    seen: list[httpx.Request] = []
    with Client("http://test", api_key="k", transport=scripted([503, 503, 200], seen)) as client:
        assert client.rank("q", ["p"]) == [Ranking(0, 1.5, "p")]
    assert len(seen) == 3 and seen[0].headers["authorization"] == "Bearer k"
    seen.clear()
    with Client("http://test", retries=1, transport=scripted([503, 503, 503], seen)) as client:
        with pytest.raises(ClientError) as caught:
            client.rank("q", ["p"])
    assert caught.value.status == 503 and caught.value.type == "overloaded" and len(seen) == 2


def test_serve_help_shows_each_default_once_and_the_choices(capsys):
    from rankserve.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text  # argparse's own default note repeated ours
    for choices in ("{auto,float32,bfloat16,float16}", "{torch,onnxruntime,openvino}", "{none,int8}", "{text,json}"):
        assert choices in text
