"""Several models in one process (``--model NAME=PATH``, repeatable): routing by ``model``, the
defaults when it is omitted, /v1/models, one batcher per model, and metrics labelled by model."""

from __future__ import annotations

import time

import pytest
from conftest import app_client, metric_sum, wait_ready

from rankserve.cli import build_parser, config_from
from rankserve.config import load_config
from rankserve.errors import ConfigError

QUERY = {"text": "how do I list the files in a directory"}
PASSAGES = [{"text": "ls lists directory contents"}, {"text": "bananas are yellow"}, {"text": "paris is in france"}]


@pytest.fixture(scope="module")
def two(bert_ce_dir, bert_bi_dir):
    with app_client(model=f"rr={bert_ce_dir},emb={bert_bi_dir}") as client:
        wait_ready(client)
        yield client


def logits(response) -> dict[int, float]:
    assert response.status_code == 200, response.text
    return {r["index"]: r["logit"] for r in response.json()["rankings"]}


def test_models_lists_every_model_in_order(two):
    assert [m["id"] for m in two.get("/v1/models").json()["data"]] == ["rr", "emb"]
    assert list(two.app.state.engines) == ["rr", "emb"]
    rr, emb = two.app.state.engines.values()
    assert rr.batcher is not emb.batcher and rr.spec.kind == "cross-encoder" and emb.spec.kind == "embedder"


def test_requests_route_by_model_and_match_one_model_servers(two, bert_ce_dir, bert_bi_dir):
    body = {"query": QUERY, "passages": PASSAGES}
    default = logits(two.post("/v1/ranking", json=body))  # no model: the cross-encoder
    by_name = {name: logits(two.post("/v1/ranking", json={**body, "model": name})) for name in ("rr", "emb")}
    assert default == by_name["rr"]
    for name, directory in (("rr", bert_ce_dir), ("emb", bert_bi_dir)):
        with app_client(model=str(directory)) as alone:
            wait_ready(alone)
            expected = logits(alone.post("/v1/ranking", json=body))
        assert by_name[name].keys() == expected.keys()
        assert max(abs(by_name[name][i] - expected[i]) for i in expected) <= 1e-6, name
    assert by_name["rr"] != by_name["emb"]  # two different models really answered


def test_embeddings_default_to_the_embedder_and_refuse_the_reranker(two):
    r = two.post("/v1/embeddings", json={"input": ["hello", "world"]})
    assert r.status_code == 200 and r.json()["model"] == "emb"
    named = two.post("/v1/embeddings", json={"input": ["hello", "world"], "model": "emb"})
    assert named.json()["data"] == r.json()["data"]
    refused = two.post("/v1/embeddings", json={"input": ["hello"], "model": "rr"})
    assert refused.status_code == 400 and "reranker" in refused.json()["error"]["message"]


def test_unknown_model_is_a_400_naming_the_served_ones(two):
    r = two.post("/v1/ranking", json={"query": QUERY, "passages": PASSAGES, "model": "nope"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "'nope'" in message and "'rr'" in message and "'emb'" in message
    assert r.json()["error"]["param"] == "model"


def test_compat_routes_route_too(two):
    cohere = two.post(
        "/v1/rerank", json={"model": "emb", "query": QUERY["text"], "documents": [p["text"] for p in PASSAGES]}
    )
    assert cohere.status_code == 200
    cosines = logits(two.post("/v1/ranking", json={"query": QUERY, "passages": PASSAGES, "model": "emb"}))
    assert {r["index"]: r["relevance_score"] for r in cohere.json()["results"]} == pytest.approx(cosines, abs=1e-6)
    hosted = two.post("/v1/retrieval/nvidia/emb/reranking", json={"query": QUERY, "passages": PASSAGES})
    assert logits(hosted) == pytest.approx(cosines, abs=1e-6)


def test_metrics_carry_the_model_label(two):
    before = two.get("/v1/metrics").text
    r = two.post("/v1/ranking", json={"query": QUERY, "passages": PASSAGES, "model": "emb"})
    assert r.status_code == 200
    after = two.get("/v1/metrics").text
    moved = {
        m: metric_sum(after, "rankserve_tokens_total", model=m) - metric_sum(before, "rankserve_tokens_total", model=m)
        for m in ("rr", "emb")
    }
    assert moved["rr"] == 0 and moved["emb"] > 0  # only the model that ran counted tokens
    assert (
        metric_sum(after, "rankserve_runtime_info", model="rr")
        == 1
        == metric_sum(after, "rankserve_runtime_info", model="emb")
    )
    # HTTP series are the app's: one per route and status, no model label
    assert metric_sum(after, "rankserve_requests_total", route="/v1/ranking", status="200", model="emb") == 0
    assert metric_sum(after, "rankserve_requests_total", route="/v1/ranking", status="200") >= 1


def test_cli_model_flag_repeats(bert_ce_dir, bert_bi_dir):
    args = build_parser().parse_args(["serve", "--model", f"rr={bert_ce_dir}", "--model", f"emb={bert_bi_dir}"])
    config = config_from(args)
    assert config.model_entries() == [("rr", str(bert_ce_dir)), ("emb", str(bert_bi_dir))]
    single = config_from(build_parser().parse_args(["serve", "--model", str(bert_ce_dir)]))
    assert single.model_entries() == [(None, str(bert_ce_dir))]  # a bare PATH keeps its meaning


@pytest.mark.parametrize(
    "model, why",
    [
        ("{ce},{bi}", "each needs a name"),
        ("a={ce},a={bi}", "share a name"),
        ("a={ce},b=", "an empty entry"),
        ("a={ce},b=/no/such/dir", "not a directory"),
    ],
)
def test_bad_model_lists_are_config_errors(bert_ce_dir, bert_bi_dir, model, why):
    with pytest.raises(ConfigError, match=why):
        load_config({"model": model.format(ce=bert_ce_dir, bi=bert_bi_dir)}, environ={})


def test_one_model_failing_to_load_fails_the_start_loudly(bert_ce_dir, tmp_path):
    (tmp_path / "broken").mkdir()  # a folder without config.json
    with app_client(model=f"rr={bert_ce_dir},broken={tmp_path / 'broken'}") as client:
        for _ in range(200):
            ready = client.get("/v1/health/ready")
            if ready.json()["status"] == "failed":
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and "config.json" in ready.json()["message"]
        assert client.post("/v1/ranking", json={"query": QUERY, "passages": PASSAGES}).status_code == 503


def test_config_file_toml_and_yaml_with_models(bert_ce_dir, bert_bi_dir, tmp_path, monkeypatch):
    toml = tmp_path / "rankserve.toml"
    toml.write_text(f'max-passages = 7\ndtype = "float32"\n[models]\nrr = "{bert_ce_dir}"\nemb = "{bert_bi_dir}"\n')
    monkeypatch.delenv("RANKSERVE_MAX_PASSAGES", raising=False)
    config = config_from(build_parser().parse_args(["serve", "--config", str(toml)]))
    assert config.model_entries() == [("rr", str(bert_ce_dir)), ("emb", str(bert_bi_dir))]
    assert config.max_passages == 7 and config.dtype == "float32"
    monkeypatch.setenv("RANKSERVE_MAX_PASSAGES", "9")  # env beats the file, a flag beats both
    assert config_from(build_parser().parse_args(["serve", "--config", str(toml)])).max_passages == 9
    flagged = config_from(build_parser().parse_args(["serve", "--config", str(toml), "--max-passages", "11"]))
    assert flagged.max_passages == 11
    yml = tmp_path / "rankserve.yaml"
    yml.write_text(f"models:\n  rr: {bert_ce_dir}\nmax_passages: 5\n")
    monkeypatch.delenv("RANKSERVE_MAX_PASSAGES")
    from_yaml = config_from(build_parser().parse_args(["serve", "--config", str(yml)]))
    assert from_yaml.model_entries() == [("rr", str(bert_ce_dir))] and from_yaml.max_passages == 5


@pytest.mark.parametrize(
    "text, why",
    [
        ("max_pasages = 3\n", "unknown setting 'max_pasages'"),
        ("port = \n", "cannot read config file"),
        ("models = 3\n", "models must be a table"),
    ],
)
def test_bad_config_files_are_config_errors(tmp_path, text, why):
    from rankserve.config import read_config_file

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why):
        read_config_file(path)
