"""BM25 tokenization and search, exact dense search, the embedding cache, rerank plumbing, URLs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rankserve.eval.clients import base_url
from rankserve.eval.metrics import ranking
from rankserve.eval.retrieval import bm25_search, dense_search, embed_cached, rerank_runs, tokenize


def test_tokenize_per_language():
    en = tokenize("The files are listed in the directory", "en")
    assert "the" not in en and "are" not in en  # stopwords
    de = tokenize("Die Dateien werden im Verzeichnis aufgelistet", "de")
    assert "die" not in de and "im" not in de
    assert tokenize("x", "en") == []  # one-character words are dropped


def test_tokenize_stems_with_pystemmer():
    pytest.importorskip("Stemmer", reason="PyStemmer not installed: BM25 runs without stemming")
    assert "file" in tokenize("files listed", "en") and "list" in tokenize("files listed", "en")
    assert "datei" in tokenize("Dateien", "de")
    assert tokenize("Fichiers", "fr") == tokenize("fichier", "fr")


def test_tokenize_cjk_as_bigrams():
    assert tokenize("ディレクトリ", "ja") == ["ディ", "ィレ", "レク", "クト", "トリ"]
    assert tokenize("列出目录内容 ls", "zh") == ["ls", "列出", "出目", "目录", "录内", "内容"]


def test_bm25_ranks_matching_documents_and_drops_non_matching():
    docs = {
        "ls": "ls lists directory contents, files and directories",
        "cp": "cp copies files and directories",
        "date": "date prints the system date and time",
    }
    run = bm25_search(
        list(docs),
        [tokenize(t) for t in docs.values()],
        ["q1", "q2", "q3"],
        [tokenize("list directory contents"), tokenize("print the time"), tokenize("the")],
        k=10,
        progress=False,
    )
    assert ranking(run["q1"])[0] == "ls"
    assert list(run["q2"]) == ["date"]  # cp and ls share no term with the query: not retrieved
    assert run["q3"] == {}  # only a stopword


def test_dense_search_is_exact_cosine_top_k():
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(300, 16)), rng.normal(size=(37, 16))
    doc_ids = [f"d{i}" for i in range(300)]
    run = dense_search(doc_ids, docs, [f"q{i}" for i in range(37)], queries, k=10, batch=8, progress=False)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        docs / np.linalg.norm(docs, axis=1, keepdims=True)
    ).T
    for i in range(37):
        expected = [doc_ids[j] for j in np.argsort(-cos[i])[:10]]
        assert ranking(run[f"q{i}"]) == expected
        assert run[f"q{i}"][expected[0]] == pytest.approx(cos[i].max(), abs=1e-5)
    small = dense_search(doc_ids[:5], docs[:5], ["q"], queries[:1], k=10, progress=False)
    assert len(small["q"]) == 5


class CountingEmbedder:
    identity = "fake:1"

    def __init__(self):
        self.calls = 0

    async def embed(self, texts, input_type):
        self.calls += 1
        return np.array([[len(t), 1.0 if input_type == "query" else 0.0] for t in texts], dtype=np.float32)


def test_embedding_cache_is_keyed_by_model_input_type_and_data(tmp_path):
    emb = CountingEmbedder()
    texts = ["a", "bbb", "cc"] * 50

    def run(texts, input_type="passage", fp="x"):
        return asyncio.run(embed_cached(emb, texts, input_type, fp, tmp_path, batch_size=16, progress=False))

    vecs, cached = run(texts)
    assert not cached and emb.calls == 10  # 150 texts in batches of 16
    assert vecs[:3, 0].tolist() == [1, 3, 2]  # input order restored after length-sorted batching
    again, cached = run(texts)
    assert cached and emb.calls == 10 and np.array_equal(vecs, again)
    _, cached = run(texts, fp="y")  # other data
    assert not cached
    _, cached = run(texts, input_type="query")
    assert not cached
    emb.identity = "fake:2"  # other model
    _, cached = run(texts)
    assert not cached


class RecordingReranker:
    identity = "fake-reranker"

    def __init__(self):
        self.seen: list[tuple[str, list[str]]] = []

    async def rerank(self, query, passages):
        self.seen.append((query, list(passages)))
        return [float(len(p)) for p in passages]


def test_rerank_scores_each_candidate_once_for_both_runs():
    dense = {"q": {"a": 0.9, "bb": 0.8, "ccc": 0.1}}
    fused = {"q": {"bb": 0.5, "dddd": 0.4, "a": 0.3}}
    rr = RecordingReranker()
    texts = {d: d for d in ("a", "bb", "ccc", "dddd")}
    out = asyncio.run(rerank_runs(rr, [dense, fused], {"q": "query"}, texts, k=2, progress=False))
    assert len(rr.seen) == 1 and sorted(rr.seen[0][1]) == ["a", "bb", "dddd"]  # union of the two top-2s
    assert out[0] == {"q": {"a": 1.0, "bb": 2.0}}
    assert out[1] == {"q": {"bb": 2.0, "dddd": 4.0}}


@pytest.mark.parametrize(
    "url",
    ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/ranking", "http://h:8000/v1/embeddings"],
)
def test_base_url(url):
    assert base_url(url) == "http://h:8000"
