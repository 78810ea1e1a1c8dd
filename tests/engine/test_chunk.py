"""truncate CHUNK: a long passage split into overlapping windows (the query and specials in each),
every window scored, the passage given the best (or mean) window score."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import app_client, metric_sum, wait_ready

from rankserve.config import load_config
from rankserve.engine.engine import Engine
from rankserve.engine.tokenize import CHUNK_OVERLAP, TokenizerPolicy
from rankserve.errors import ConfigError
from rankserve.metrics import Metrics

QUERY = "how do I list the files in a directory"
FILLER = "The weather report says rain and wind tomorrow across the region with cooler temperatures. " * 40
ANSWER = "To list the files in a directory use the ls command, which prints directory contents."


def engine(directory=None, **overrides) -> Engine:
    config = load_config(
        {"model": str(directory) if directory else None, "dtype": "float32", "cache_size": 0, **overrides}, environ={}
    )
    return Engine.load(config, Metrics())


def run(e: Engine, coro):
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(e.start())
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(e.stop())
        loop.close()


def test_windows_cover_the_passage_and_keep_the_query(bert_ce_dir):
    spec_engine = engine(bert_ce_dir)
    policy: TokenizerPolicy = spec_engine.policy
    long = FILLER + ANSWER
    windows, owners = policy.pair_windows(QUERY, [long, "short passage"])
    full = policy.tokenizer.encode(QUERY, long)
    passage_ids = [t for t, s in zip(full.ids, full.sequence_ids) if s == 1]
    query_ids = [t for t, s in zip(full.ids, full.sequence_ids) if s == 0]
    assert owners.count(0) > 1 and owners.count(1) == 1 and owners == sorted(owners)
    assert windows[-1].ids == policy.pairs(QUERY, ["short passage"], "END")[0].ids  # a short one is untouched
    room = policy.max_length - (len(full.ids) - len(passage_ids))
    step = room - int(room * CHUNK_OVERLAP)
    bodies = []
    for w in (w for w, o in zip(windows, owners) if o == 0):
        assert len(w) <= policy.max_length
        assert w.ids[1 : 1 + len(query_ids)] == query_ids and w.ids[0] == full.ids[0] and w.ids[-1] == full.ids[-1]
        bodies.append(w.ids[2 + len(query_ids) : -1])
    # window k holds passage tokens [k * step, k * step + room): overlapping, and the last reaches the end
    assert bodies == [passage_ids[k * step : k * step + room] for k in range(len(bodies))]
    assert (len(bodies) - 1) * step + room >= len(passage_ids) > (len(bodies) - 2) * step + room


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_chunk_score_is_the_aggregate_of_its_windows(bert_ce_dir, aggregate):
    e = engine(bert_ce_dir, chunk_aggregate=aggregate)
    passages = [FILLER + ANSWER, "ls lists directory contents", FILLER]
    result = run(e, e.rank(QUERY, passages, "CHUNK"))
    windows, owners = e.policy.pair_windows(QUERY, passages)
    each = e.runner.forward(windows)
    for i in range(len(passages)):
        mine = np.array([each[j] for j, o in enumerate(owners) if o == i])
        expected = mine.max() if aggregate == "max" else mine.mean()
        assert abs(result.scores[i] - float(expected)) <= 1e-5
    assert result.tokens == sum(len(w) for w in windows)


def test_chunk_finds_an_answer_past_the_model_limit_with_the_real_model():
    e = engine()  # all-MiniLM-L6-v2: 256 tokens; the answer sits after ~700 tokens of filler
    passages = [FILLER + ANSWER, "bananas are yellow fruit", "ls lists directory contents"]

    async def both():
        return await e.rank(QUERY, passages, "END"), await e.rank(QUERY, passages, "CHUNK")

    end, chunk = run(e, both())
    assert chunk.scores[0] > end.scores[0] + 0.1  # measured -0.012 -> 0.143
    assert chunk.scores[1:] == pytest.approx(end.scores[1:], abs=1e-6)  # short passages: one window, same score
    assert chunk.tokens > end.tokens


def test_http_truncate_chunk_usage_default_and_metrics(bert_ce_dir):
    body = {"query": {"text": QUERY}, "passages": [{"text": FILLER + ANSWER}, {"text": "short"}]}
    with app_client(model=str(bert_ce_dir), truncate_default="CHUNK") as client:
        wait_ready(client)
        end = client.post("/v1/ranking", json={**body, "truncate": "END"}).json()
        default = client.post("/v1/ranking", json=body).json()  # the server default: CHUNK
        chunk = client.post("/v1/ranking", json={**body, "truncate": "CHUNK"}).json()
        cohere = client.post("/v1/rerank", json={"query": QUERY, "documents": [p["text"] for p in body["passages"]]})
        windows = metric_sum(client.get("/v1/metrics").text, "rankserve_chunk_windows_total")
    assert default == chunk and default["usage"]["total_tokens"] > end["usage"]["total_tokens"]
    assert cohere.status_code == 200 and windows >= 3 * 2  # three CHUNK requests, >= 2 windows each


def test_chunk_settings_are_validated():
    for bad in ({"truncate_default": "START"}, {"chunk_aggregate": "median"}):
        with pytest.raises(ConfigError):
            load_config(bad, environ={})


def test_eval_rerank_truncate_reaches_the_engine():
    """`rankserve eval --rerank-truncate CHUNK`: the rerank stage scores long documents by windows."""
    from rankserve.eval.clients import open_clients

    async def scores(truncate: str) -> list[float]:
        embedder, reranker, opened = await open_clients(None, None, None, None, rerank_truncate=truncate)
        try:
            assert reranker.rerank_truncate == truncate
            return await reranker.rerank(QUERY, [FILLER + ANSWER, "ls lists directory contents"])
        finally:
            for c in opened:
                await c.close()

    end, chunk = asyncio.run(scores("END")), asyncio.run(scores("CHUNK"))
    assert chunk[0] > end[0] + 0.1 and chunk[1] == pytest.approx(end[1], abs=1e-6)


def test_chunk_max_windows_keeps_the_first_windows(bert_ce_dir):
    """--chunk-max-windows N: a passage's first N windows only (the same windows as without the cap);
    with N = 1 CHUNK scores exactly what END scores (window 0 is END's cut)."""
    long = FILLER * 3 + ANSWER
    policy = engine(bert_ce_dir).policy
    every, owners = policy.pair_windows(QUERY, [long, "short"])
    assert owners.count(0) > 3
    capped, capped_owners = policy.pair_windows(QUERY, [long, "short"], limit=2)
    assert capped_owners == [0, 0, 1]
    assert [w.ids for w in capped] == [w.ids for w in every[:2]] + [every[-1].ids]
    one = engine(bert_ce_dir, chunk_max_windows=1)

    async def both():
        return [await one.rank(QUERY, [long, "short", ANSWER], t) for t in ("CHUNK", "END")]

    chunk, end = run(one, both())
    assert chunk.scores == pytest.approx(end.scores, abs=1e-6) and chunk.tokens == end.tokens
    with pytest.raises(ConfigError):
        load_config({"chunk_max_windows": -1}, environ={})
