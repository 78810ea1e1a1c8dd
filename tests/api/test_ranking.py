"""/v1/ranking against the real default model and a tiny cross-encoder, in-process."""

from __future__ import annotations

import pytest
import torch
from checkpoints import WORDS
from conftest import app_client, wait_ready

# Logits vs independent references (transformers for the tiny cross-encoder, sentence-transformers
# cosines for the default bi-encoder), fp32 on CPU: measured max abs diff ~1e-7 to 5e-7.
REF_TOL = 1e-5

# (query, relevant passage, irrelevant passages): real English, judged by the real default model.
CASES = [
    (
        "How do I list the files in a directory?",
        "The ls command lists the contents of a directory.",
        ["Bananas are a good source of potassium.", "Paris is the capital of France.", "The stock market fell today."],
    ),
    (
        "What is the capital of France?",
        "Paris is the capital and largest city of France.",
        [
            "The ls command lists the contents of a directory.",
            "Cats sleep for most of the day.",
            "Python is a programming language.",
        ],
    ),
    (
        "Which fruit is rich in potassium?",
        "Bananas are a good source of potassium.",
        ["Paris is the capital of France.", "A compiler translates source code.", "The ocean covers most of Earth."],
    ),
    (
        "How do I compress a file on Linux?",
        "gzip compresses files using the Lempel-Ziv coding.",
        ["The Eiffel Tower is in Paris.", "Bananas are yellow when ripe.", "Football is played with eleven players."],
    ),
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


@pytest.fixture(scope="module")
def ce_reference(bert_ce_dir):
    """transformers' BertForSequenceClassification and the checkpoint's tokenizer (no padding and no
    truncation: the copied MiniLM tokenizer.json pads to 128 by default)."""
    from tokenizers import Tokenizer
    from transformers import BertForSequenceClassification

    tok = Tokenizer.from_file(str(bert_ce_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return BertForSequenceClassification.from_pretrained(bert_ce_dir).eval(), tok


def hf_logit(model, encoding) -> float:
    """transformers' logit for one tokenized (query, passage) pair."""
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([encoding.ids]),
            token_type_ids=torch.tensor([encoding.type_ids]),
            attention_mask=torch.tensor([encoding.attention_mask]),
        )
    return out.logits[0, 0].item()


def truncating_tokenizer(directory, limit, side):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(limit, strategy="only_second", direction=side)
    return tok


def check_sorted_permutation(rankings, n):
    assert sorted(x["index"] for x in rankings) == list(range(n))  # every passage exactly once
    logits = [x["logit"] for x in rankings]
    assert logits == sorted(logits, reverse=True)


def test_cross_encoder_scores_match_engine_order(ce_client, ce_reference):
    model, tok = ce_reference
    query = "list files"
    passages = ["list files in a directory", "banana fruit", "show disk space usage", "paris"]
    r = rank(ce_client, query, passages, model="tiny-ce")
    assert r.status_code == 200, r.text
    body = r.json()
    rankings = body["rankings"]
    check_sorted_permutation(rankings, len(passages))
    encodings = [tok.encode(query, p) for p in passages]
    expected = [hf_logit(model, e) for e in encodings]
    got = {x["index"]: x["logit"] for x in rankings}
    diff = max(abs(got[i] - expected[i]) for i in range(len(passages)))
    print(f"cross-encoder HTTP vs transformers: max abs diff {diff:.2e}; logits {expected}")
    assert diff <= REF_TOL
    assert max(expected) - min(expected) > 0.1  # the check can fail: scores differ between passages
    assert body["usage"]["prompt_tokens"] == sum(len(e.ids) for e in encodings)
    # Same passages in reverse order: same logits per passage, indices follow the request.
    r2 = rank(ce_client, query, passages[::-1]).json()["rankings"]
    check_sorted_permutation(r2, len(passages))
    for x in r2:
        assert x["logit"] == pytest.approx(expected[len(passages) - 1 - x["index"]], abs=REF_TOL)


@pytest.fixture(scope="module")
def st_default():
    from sentence_transformers import SentenceTransformer

    from rankserve.models.model_dir import default_model_dir

    return SentenceTransformer(str(default_model_dir()), device="cpu")


def st_cosines(st, query, passages) -> list[float]:
    q, p = st.encode([query]), st.encode(list(passages))  # ends in Normalize: unit vectors
    q, p = (
        torch.nn.functional.normalize(torch.tensor(q), dim=-1),
        torch.nn.functional.normalize(torch.tensor(p), dim=-1),
    )
    return (p @ q[0]).tolist()


@pytest.mark.parametrize("query,relevant,others", CASES)
def test_default_model_logits_are_sentence_transformers_cosines(default_client, st_default, query, relevant, others):
    passages = [*others, relevant]
    r = rank(default_client, query, passages)
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    check_sorted_permutation(rankings, len(passages))
    expected = st_cosines(st_default, query, passages)
    got = {x["index"]: x["logit"] for x in rankings}
    diff = max(abs(got[i] - expected[i]) for i in range(len(passages)))
    print(f"bi-encoder HTTP vs sentence-transformers cosine: max abs diff {diff:.2e}")
    assert diff <= REF_TOL


README_PASSAGES = [
    "Bananas are a good source of potassium.",
    "The ls command lists the contents of a directory.",
    "Paris is the capital of France.",
]
README_OUTPUT = [(1, 0.649397611618042), (2, 0.025144480168819427), (0, -0.0491013377904892)]


def test_readme_ranking_example(default_client, st_default):
    """README's curl request returns README's printed output (and sentence-transformers' cosines)."""
    query = "How do I list the files in a directory?"
    r = default_client.post(
        "/v1/ranking",
        json={
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "query": {"text": query},
            "passages": [{"text": p} for p in README_PASSAGES],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["rankings"]] == [i for i, _ in README_OUTPUT]
    for x, (_, logit) in zip(body["rankings"], README_OUTPUT):
        assert x["logit"] == pytest.approx(logit, abs=REF_TOL)
    expected = st_cosines(st_default, query, README_PASSAGES)
    for x in body["rankings"]:
        assert x["logit"] == pytest.approx(expected[x["index"]], abs=REF_TOL)
    assert body["usage"] == {"prompt_tokens": 44, "total_tokens": 44}


@pytest.mark.parametrize("field", ["top_k", "top_n"])
def test_top_k_returns_best_entries(default_client, field):
    query, relevant, others = CASES[0]
    full = rank(default_client, query, [relevant, *others]).json()["rankings"]
    cut = rank(default_client, query, [relevant, *others], **{field: 2}).json()["rankings"]
    assert cut == full[:2]


def test_top_k_and_top_n_together_must_agree(default_client):
    """top_n is an alias of top_k: equal values are one cut, different ones a 422 naming both."""
    query, relevant, others = CASES[0]
    full = rank(default_client, query, [relevant, *others]).json()["rankings"]
    assert rank(default_client, query, [relevant, *others], top_k=2, top_n=2).json()["rankings"] == full[:2]
    r = rank(default_client, query, [relevant, *others], top_k=2, top_n=3)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "top_k (2)" in message and "top_n (3)" in message


def test_unknown_fields_are_ignored(default_client):
    r = rank(default_client, "q", ["p"], foo="bar", extra={"x": 1})
    assert r.status_code == 200


def test_model_mismatch_names_both(default_client):
    r = rank(default_client, "q", ["p"], model="nvidia/llama-3.2-nv-rerankqa-1b-v2")
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "nvidia/llama-3.2-nv-rerankqa-1b-v2" in msg and "sentence-transformers/all-MiniLM-L6-v2" in msg


@pytest.mark.parametrize(
    "body,where",
    [
        ({"query": {"text": ""}, "passages": [{"text": "p"}]}, "query.text"),
        ({"query": {"text": "   "}, "passages": [{"text": "p"}]}, "query.text"),
        ({"query": {"text": "q"}, "passages": []}, "passages"),
        ({"query": {"text": 5}, "passages": [{"text": "p"}]}, "query.text"),
        ({"query": {"text": "q"}, "passages": [{"text": ["p"]}]}, "passages.0.text"),
        ({"query": {"text": "q"}, "passages": [{"text": "p"}], "truncate": "START"}, "truncate"),
        ({"query": "q", "passages": [{"text": "p"}]}, "query"),
        ({"passages": [{"text": "p"}]}, "query"),
        ({"query": {"text": "q"}, "passages": [{"text": "p"}], "top_k": 0}, "top_k"),
    ],
)
def test_schema_errors_are_422_with_field(default_client, body, where):
    r = default_client.post("/v1/ranking", json=body)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["param"] == where
    assert isinstance(body["detail"], list) and body["detail"][0]["loc"][0] == "body"


def test_non_json_body_is_400_json(default_client):
    r = default_client.post("/v1/ranking", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "validation_error"


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


def test_truncate_end_is_default_and_scores_long_passages(ce_client, ce_reference, bert_ce_dir):
    """END (the default) drops passage tokens from the right, then query tokens, to fit 128 tokens;
    the logit is transformers' on exactly that pair."""
    model, tok = ce_reference
    limit = 128  # the tiny checkpoint's max_position_embeddings
    query = "list files"
    long = " ".join(WORDS * 2)  # 214 tokens of varied words: cutting the wrong side changes the score
    default = rank(ce_client, query, ["short", long])
    end = rank(ce_client, query, ["short", long], truncate="END")
    assert default.status_code == end.status_code == 200, default.text
    assert default.json() == end.json()  # no field == explicit END
    got = {x["index"]: x["logit"] for x in default.json()["rankings"]}
    full = tok.encode(query, long)
    assert len(full.ids) > limit
    # Reference truncation: tokenizers' own "only_second" strategy (passage tokens only), from the right.
    cut, start_cut = (truncating_tokenizer(bert_ce_dir, limit, side).encode(query, long) for side in ("right", "left"))
    assert (
        len(cut.ids) == limit and cut.ids[:4] == full.ids[:4] and cut.ids[-1] == full.ids[-1]
    )  # [CLS] q [SEP] .. [SEP]
    expected, wrong = hf_logit(model, cut), hf_logit(model, start_cut)
    print(
        f"long passage: HTTP {got[1]:.7f}, transformers on the END-cut pair {expected:.7f} "
        f"(passage cut from the start instead: {wrong:.7f})"
    )
    assert got[1] == pytest.approx(expected, abs=REF_TOL)
    assert abs(wrong - expected) > 100 * REF_TOL  # the check can tell which side was cut
    assert got[0] == pytest.approx(hf_logit(model, tok.encode(query, "short")), abs=REF_TOL)
    assert default.json()["usage"]["prompt_tokens"] == len(tok.encode(query, "short").ids) + limit
    # A query too long by itself: the passage goes entirely, then the query is cut from the right.
    long_query = " ".join(WORDS * 2)
    r = rank(ce_client, long_query, ["short"])
    assert r.status_code == 200, r.text
    q = tok.encode(long_query, "short")
    cls_id, sep_id = q.ids[0], q.ids[-1]
    q_ids = q.ids[1 : q.type_ids.index(1) - 1]  # the query's own tokens
    ids = [cls_id, *q_ids[: limit - 3], sep_id, sep_id]
    types = [0] * (limit - 1) + [1]
    with torch.inference_mode():
        expected_q = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0, 0].item()
    assert r.json()["rankings"][0]["logit"] == pytest.approx(expected_q, abs=REF_TOL)
    assert r.json()["usage"]["prompt_tokens"] == limit


def test_server_keeps_serving_after_errors(default_client):
    for bad in (
        {"query": {"text": ""}},
        {"query": {"text": "q"}, "passages": [{"text": "x " * 2000}], "truncate": "NONE"},
    ):
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
        assert (
            client.post(
                "/v1/ranking",
                json={"query": {"text": "q"}, "passages": [{"text": "p"}]},
                headers={"Authorization": "Bearer wrong"},
            ).status_code
            == 401
        )
        ok = client.post(
            "/v1/ranking",
            json={"query": {"text": "q"}, "passages": [{"text": "p"}]},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 200
        assert client.get("/v1/health/live").status_code == 200  # health stays open


def test_any_bearer_accepted_without_key(default_client):
    for token in ("NO_API_KEY_PROVIDED", "**********", ""):
        r = default_client.post(
            "/v1/ranking",
            json={"query": {"text": "q"}, "passages": [{"text": "p"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200
