"""NVIDIA-layout Llama directories served through the app: /v1/ranking and /v1/embeddings.

Scores and vectors over HTTP must equal the model called directly (max abs diff <= 1e-5; JSON
carries float32 values exactly), with the NVIDIA template, temperature, prefixes and input_type.
"""

from __future__ import annotations

import pytest
import torch
from conftest import app_client, wait_ready
from llama_checkpoints import make_nvidia_embedder, make_nvidia_reranker

from rankserve.engine.tokenize import TokenizerPolicy
from rankserve.models.batch import Batch
from rankserve.models.loader import load_model

TOL = 1e-5
QUERY = "how do i list files in a directory"
PASSAGES = ["banana is a fruit rich in potassium", "the ls command lists directory contents", "show disk space usage"]


def direct(spec, texts=None, pairs=None) -> torch.Tensor:
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=spec.rerank_template, with_type_ids=False
    )
    encoded = policy.pairs(*pairs, "END") if pairs else policy.texts(texts, "END")
    batch = Batch.from_sequences([e.ids for e in encoded], pad_id=spec.pad_id)
    with torch.inference_mode():
        return spec.module(batch.packed()).float()


def test_nvidia_reranker_serves_ranking(tmp_path):
    directory = make_nvidia_reranker(tmp_path / "llama-3.2-nv-rerankqa-1b-v2", temperature=2.0)
    spec = load_model(directory)
    expected = direct(spec, pairs=(QUERY, PASSAGES))[:, 0] / 2.0
    with app_client(model=str(directory)) as c:
        wait_ready(c)
        r = c.post(
            "/v1/ranking",
            json={
                "model": "llama-3.2-nv-rerankqa-1b-v2",
                "query": {"text": QUERY},
                "passages": [{"text": p} for p in PASSAGES],
                "truncate": "END",
            },
        )
        assert r.status_code == 200, r.text
        rankings = r.json()["rankings"]
        assert [x["index"] for x in rankings] == expected.argsort(descending=True).tolist()
        for x in rankings:
            assert abs(x["logit"] - expected[x["index"]].item()) <= TOL
        # The embeddings route refuses a reranker with a 400 that says why.
        r = c.post("/v1/embeddings", json={"input": ["x"], "input_type": "query"})
        assert r.status_code == 400 and "reranker" in r.json()["error"]["message"]


def test_nvidia_embedder_serves_embeddings_with_input_type(tmp_path):
    directory = make_nvidia_embedder(tmp_path / "llama-3.2-nv-embedqa-1b-v2")
    spec = load_model(directory)
    texts = [QUERY, PASSAGES[0]]
    as_query = torch.nn.functional.normalize(direct(spec, texts=["query: " + t for t in texts]), dim=-1)
    as_passage = torch.nn.functional.normalize(direct(spec, texts=["passage: " + t for t in texts]), dim=-1)
    assert (as_query - as_passage).abs().max() > 1e-3  # the prefix matters
    with app_client(model=str(directory)) as c:
        wait_ready(c)
        for input_type, expected in (("query", as_query), ("passage", as_passage)):
            r = c.post("/v1/embeddings", json={"input": texts, "input_type": input_type})
            assert r.status_code == 200, r.text
            got = torch.tensor([d["embedding"] for d in r.json()["data"]])
            assert (got - expected).abs().max().item() <= TOL
        # Asymmetric prefixes: input_type is required.
        r = c.post("/v1/embeddings", json={"input": texts})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input_type"
        # Matryoshka: any size up to hidden for a model that lists none; re-normalized.
        r = c.post("/v1/embeddings", json={"input": texts, "input_type": "query", "dimensions": 32})
        got = torch.tensor([d["embedding"] for d in r.json()["data"]])
        expected = torch.nn.functional.normalize(as_query[:, :32], dim=-1)
        assert got.shape == (2, 32) and (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("flag", [{"query_prefix": "", "passage_prefix": ""}])
def test_prefix_flags_override_the_defaults(flag, tmp_path):
    directory = make_nvidia_embedder(tmp_path / "emb")
    spec = load_model(directory)
    expected = torch.nn.functional.normalize(direct(spec, texts=[QUERY]), dim=-1)
    with app_client(model=str(directory), **flag) as c:
        wait_ready(c)
        r = c.post("/v1/embeddings", json={"input": [QUERY]})  # symmetric now: input_type optional
        assert r.status_code == 200, r.text
        got = torch.tensor([d["embedding"] for d in r.json()["data"]])
        assert (got - expected).abs().max().item() <= TOL
