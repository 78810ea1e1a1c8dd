"""NIM's VL ranking shape over HTTP: passages {"text"?, "image"?}, image passages scored, usage
with image tokens, bad images as 400s naming the passage, and text-only models refusing images."""

from __future__ import annotations

import pytest
from conftest import app_client, wait_ready
from vl_checkpoints import QUERY, make_vl_reranker, picture, reference_scores


@pytest.fixture(scope="module")
def vl_client(tmp_path_factory):
    directory = make_vl_reranker(tmp_path_factory.mktemp("vl-api") / "llama-nemotron-rerank-vl-tiny")
    with app_client(
        model=str(directory),
        served_model_name="nvidia/llama-nemotron-rerank-vl-tiny",
        max_image_bytes=200_000,
        max_image_pixels=1_000_000,
        max_request_images=3,
    ) as client:
        wait_ready(client)
        client.directory = directory
        yield client


PASSAGES = [
    {"text": "the ls command lists files"},
    {"image": picture(64, 32, 1)},
    {"text": "a chart of disk usage", "image": picture(32, 96, 3)},
    {"text": "paris is the capital", "image": picture(20, 20, 4)},
]


def test_ranks_text_image_and_both(vl_client):
    r = vl_client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": PASSAGES})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = reference_scores(
        vl_client.directory, [p.get("text", "") for p in PASSAGES], [p.get("image") for p in PASSAGES]
    )
    assert [x["index"] for x in body["rankings"]] == sorted(range(4), key=lambda i: -float(expected[i]))
    for entry in body["rankings"]:
        assert abs(entry["logit"] - float(expected[entry["index"]])) < 1e-4
    # usage: every token the model read, image tokens included (tiles x 16 + <img> </img>)
    text_only = vl_client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": PASSAGES[:1]}).json()
    image_tokens = (3 + 4 + 1) * 16 + 3 * 3  # 2+1, 3+1 and 1 tiles; <img>, </img> and a space each
    assert body["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"] + image_tokens


def test_hosted_route_takes_images(vl_client):
    r = vl_client.post(
        "/v1/retrieval/nvidia/llama-nemotron-rerank-vl-tiny/reranking",
        json={"query": {"text": QUERY}, "passages": PASSAGES[1:3]},
    )
    assert r.status_code == 200, r.text
    assert sorted(x["index"] for x in r.json()["rankings"]) == [0, 1]


@pytest.mark.parametrize(
    "image, reason",
    [
        ("not a data url", "not a base64 image data URL"),
        ("data:image/png;base64,!!!", "not valid base64"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not a PNG, JPEG, WebP, GIF, BMP or TIFF"),
        ("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=", "image/svg+xml is not supported"),
        (picture(1200, 1000, 5), "max_image"),  # over both the byte and the pixel limit: the byte check comes first
    ],
)
def test_bad_image_is_400_naming_the_passage_and_server_keeps_serving(vl_client, image, reason):
    passages = [{"text": "fine"}, {"text": "bad", "image": image}]
    r = vl_client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": passages})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["message"].startswith("passages[1].image: ") and reason in error["message"]
    assert error["param"] == "passages.1.image"
    ok = vl_client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": PASSAGES[:2]})
    assert ok.status_code == 200


def test_passage_needs_text_or_image(vl_client):
    r = vl_client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": [{"text": "a"}, {}]})
    assert r.status_code == 422
    assert "needs text, an image" in r.text


def test_chunk_does_not_apply_to_images(vl_client):
    r = vl_client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": PASSAGES[1:2], "truncate": "CHUNK"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncate"


def test_text_only_model_refuses_images(ce_client):
    r = ce_client.post(
        "/v1/ranking",
        json={"query": {"text": "q"}, "passages": [{"text": "a"}, {"text": "b", "image": picture(8, 8, 0)}]},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "reads text only" in error["message"] and error["param"] == "passages.1.image"


def test_image_count_limit_is_413_before_decoding(vl_client):
    """More image passages than --max-request-images (3 here): 413, even when the images are bad
    (counted before any is decoded)."""
    passages = [{"image": "data:image/png;base64,bm90IGFuIGltYWdl"}] * 4
    r = vl_client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": passages})
    assert r.status_code == 413, r.text
    assert "max_request_images" in r.json()["error"]["message"]
