"""Property-based fuzzing: every route, schema-valid and schema-invalid bodies, odd text; no 5xx.

schemathesis generates requests from the app's own OpenAPI document (positive and negative
modes, NUL bytes and lone surrogates allowed) and runs them in-process against the ASGI app; its
checks: no server error, every status and body declared in the schema, content types right.
hypothesis drives /v1/ranking with arbitrary Unicode (surrogates, NUL, RTL marks, emoji) and checks
the ranking's invariants against the engine's own truncation rules.
"""

from __future__ import annotations

import json
import time

import pytest
import schemathesis
from conftest import app_client, wait_ready
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from rankserve.api.app import create_app
from rankserve.config import load_config

# Small limits so that generated lists hit them; the default model serves every route.
APP = create_app(load_config({"max_passages": 16, "max_inputs": 16, "warmup": False}, environ={}))
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
SCHEMA.config.generation.update(modes=list(schemathesis.GenerationMode), allow_x00=True, max_examples=40)
SCHEMA.config.generation.codec = None  # any code point, lone surrogates included


def wait_for_model() -> None:
    """schemathesis starts (and after each test stops) the app's lifespan: wait for the model."""
    if APP.state.ready:
        return
    with asgi.get_client(APP) as client:
        deadline = time.monotonic() + 120
        while client.get("/v1/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.05)


@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_declared_statuses_and_no_5xx(case):
    wait_for_model()
    # Schema-valid bodies may still be refused on purpose (an unserved model name is a 400).
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text
    json.dumps(response.json())  # the body decodes and re-encodes: nothing unencodable in it


# Arbitrary code points: st.characters() with no codec yields lone surrogates too.
ANY_TEXT = st.text(st.characters(), min_size=0, max_size=40)


@pytest.fixture(scope="module")
def ce(bert_ce_dir):
    with app_client(model=str(bert_ce_dir), max_passages=8, warmup=False) as client:
        wait_ready(client)
        yield client


@given(query=ANY_TEXT, passages=st.lists(ANY_TEXT, min_size=0, max_size=6))
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_unicode_is_ranked_or_refused_with_4xx(ce, query, passages):
    body = json.dumps({"query": {"text": query}, "passages": [{"text": p} for p in passages]})  # \\ud800 escaped
    r = ce.post("/v1/ranking", content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    assert r.json()  # encodable, parseable
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for t in [query, *passages] for c in t)
    valid = query.strip() and passages and all(passages) and not has_surrogate
    if not valid:
        assert r.status_code == 422, r.text
        return
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    assert sorted(x["index"] for x in rankings) == list(range(len(passages)))  # every passage once
    logits = [x["logit"] for x in rankings]
    assert logits == sorted(logits, reverse=True)


WORDS = st.sampled_from("list files directory show disk space usage banana paris capital the a of".split())
SENTENCE = st.lists(WORDS, min_size=1, max_size=70).map(" ".join)


@given(query=SENTENCE, passages=st.lists(SENTENCE, min_size=1, max_size=5))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_truncation_invariants(ce, query, passages):
    """END never refuses; NONE refuses exactly the pairs over the limit; where all fit, they agree."""
    policy = ce.app.state.engine.policy
    lengths = [len(policy.tokenizer.encode(query, p).ids) for p in passages]
    end = ce.post("/v1/ranking", json={"query": {"text": query}, "passages": [{"text": p} for p in passages]})
    none = ce.post(
        "/v1/ranking", json={"query": {"text": query}, "passages": [{"text": p} for p in passages], "truncate": "NONE"}
    )
    assert end.status_code == 200, end.text
    assert end.json()["usage"]["prompt_tokens"] == sum(min(n, policy.max_length) for n in lengths)
    over = [i for i, n in enumerate(lengths) if n > policy.max_length]
    if over:
        assert none.status_code == 400 and f"passages[{over[0]}]" in none.json()["error"]["message"]
    else:
        assert none.status_code == 200
        assert none.json()["rankings"] == end.json()["rankings"]
