"""Retrievers and the stages built on them: BM25 (bm25s), exact dense search (numpy) over cached
embeddings, reciprocal rank fusion, and reranking of the top-k.

A run is ``{query_id: {doc_id: score}}`` (higher is better), as in metrics.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rankserve.eval.beir import Dataset
from rankserve.eval.clients import Embedder, Reranker
from rankserve.eval.metrics import ranking

Run = dict[str, dict[str, float]]
RRF_K = 60

# -- BM25 -----------------------------------------------------------------------------------

# bm25s stopword lists and Snowball stemmers (PyStemmer, optional) by ISO 639-1 code.
_STOPWORDS = {
    "en": "STOPWORDS_EN",
    "de": "STOPWORDS_GERMAN",
    "fr": "STOPWORDS_FRENCH",
    "es": "STOPWORDS_SPANISH",
    "it": "STOPWORDS_ITALIAN",
    "nl": "STOPWORDS_DUTCH",
    "pt": "STOPWORDS_PORTUGUESE",
    "ru": "STOPWORDS_RUSSIAN",
    "sv": "STOPWORDS_SWEDISH",
    "da": "STOPWORDS_DANISH",
    "no": "STOPWORDS_NORWEGIAN",
    "tr": "STOPWORDS_TURKISH",
}
_STEMMERS = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "nl": "dutch",
    "pt": "portuguese",
    "ru": "russian",
    "sv": "swedish",
    "da": "danish",
    "no": "norwegian",
    "fi": "finnish",
    "hu": "hungarian",
    "ro": "romanian",
    "tr": "turkish",
    "cs": "czech",
    "el": "greek",
    "id": "indonesian",
    "ca": "catalan",
}
_WORD = re.compile(r"\w+")
# Han, kana, Hangul: scripts written without spaces; indexed as overlapping character bigrams.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")


def base_lang(lang: str | None) -> str:
    return (lang or "en").replace("-", "_").split("_")[0].lower()


@cache
def _stopwords(lang: str) -> frozenset[str]:
    import bm25s.stopwords

    name = _STOPWORDS.get(lang)
    return frozenset(getattr(bm25s.stopwords, name)) if name else frozenset()


@cache
def _stemmer(lang: str):
    if os.environ.get("RANKSERVE_EVAL_NO_STEM") or lang not in _STEMMERS:
        return None
    try:
        import Stemmer  # PyStemmer: optional
    except ImportError:
        return None
    return Stemmer.Stemmer(_STEMMERS[lang])


def tokenize(text: str, lang: str | None = "en") -> list[str]:
    """Lowercased words of 2+ characters minus the language's stopwords, Snowball-stemmed when
    PyStemmer is installed; runs of CJK characters become character bigrams."""
    lang = base_lang(lang)
    text = unicodedata.normalize("NFKC", text).lower()
    words, cjk = [], []
    for w in _WORD.findall(text):
        if _CJK.search(w):
            for run in _CJK.findall(w):
                cjk.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
            w = _CJK.sub(" ", w)
            words.extend(x for x in w.split() if len(x) > 1)
        elif len(w) > 1:
            words.append(w)
    stop = _stopwords(lang)
    words = [w for w in words if w not in stop]
    stemmer = _stemmer(lang)
    if stemmer is not None:
        words = stemmer.stemWords(words)
    return words + cjk


def corpus_tokens(ds: Dataset, lang: str = "en") -> list[list[str]]:
    """Every document of ``ds`` tokenized for BM25, each in its own language (``lang`` if unset)."""
    return [tokenize(t, ds.doc_lang.get(d, lang)) for d, t in zip(ds.doc_ids, ds.doc_texts)]


def query_tokens(ds: Dataset, lang: str = "en") -> list[list[str]]:
    """Every query of ``ds`` tokenized for BM25, each in its own language (``lang`` if unset)."""
    return [tokenize(t, ds.query_lang.get(q, lang)) for q, t in zip(ds.query_ids, ds.query_texts)]


def bm25_search(
    doc_ids: Sequence[str],
    doc_tokens: list[list[str]],
    query_ids: Sequence[str],
    query_tokens: list[list[str]],
    k: int,
    progress: bool = True,
) -> Run:
    """BM25 (bm25s defaults: Lucene variant, k1=1.5, b=0.75) top-k; documents scoring 0 are not retrieved."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(doc_tokens, show_progress=progress)
    k = min(k, len(doc_ids))
    run: Run = {q: {} for q in query_ids}
    asked = [i for i, t in enumerate(query_tokens) if t]
    if asked and k:
        idx, scores = retriever.retrieve([query_tokens[i] for i in asked], k=k, show_progress=progress, n_threads=1)
        for row, i in enumerate(asked):
            run[query_ids[i]] = {doc_ids[j]: float(s) for j, s in zip(idx[row], scores[row]) if s > 0}
    return run


# -- dense ----------------------------------------------------------------------------------


def cache_path(cache_dir: Path, identity: str, input_type: str, fingerprint: str) -> Path:
    key = hashlib.sha256(f"{identity}\0{input_type}\0{fingerprint}".encode()).hexdigest()[:32]
    return cache_dir / f"{key}.npy"


async def embed_all(
    client: Embedder,
    texts: Sequence[str],
    input_type: str,
    *,
    batch_size: int = 64,
    concurrency: int = 4,
    desc: str = "embed",
    progress: bool = True,
) -> np.ndarray:
    """Embed in length-sorted batches with a few in flight; rows come back in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[np.ndarray | None] = [None] * len(batches)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)

    async def one(n: int) -> None:
        async with gate:
            out[n] = await client.embed([texts[i] for i in batches[n]], input_type)
            bar.update(len(batches[n]))

    try:
        await asyncio.gather(*(one(n) for n in range(len(batches))))
    finally:
        bar.close()
    if not batches:
        return np.zeros((0, 0), dtype=np.float32)
    vectors = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
    for rows, block in zip(batches, out):
        vectors[rows] = block
    return vectors


async def embed_cached(
    client: Embedder, texts: Sequence[str], input_type: str, fingerprint: str, cache_dir: Path | None, **kw
) -> tuple[np.ndarray, bool]:
    """Embeddings from ``cache_dir`` (keyed by model identity + input type + data hash) or computed
    and stored there. Returns (vectors, was_cached)."""
    path = cache_path(cache_dir, client.identity, input_type, fingerprint) if cache_dir else None
    if path is not None and path.is_file():
        vectors = np.load(path)
        if vectors.shape[0] == len(texts):
            return vectors, True
    vectors = await embed_all(client, texts, input_type, **kw)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
    return vectors, False


def unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def dense_search(
    doc_ids: Sequence[str],
    doc_vecs: np.ndarray,
    query_ids: Sequence[str],
    query_vecs: np.ndarray,
    k: int,
    batch: int = 256,
    progress: bool = True,
) -> Run:
    """Exact cosine top-k, queries in batches (memory: batch x corpus floats)."""
    docs = unit(doc_vecs.astype(np.float32, copy=False))
    queries = unit(query_vecs.astype(np.float32, copy=False))
    k = min(k, len(doc_ids))
    run: Run = {}
    for start in tqdm(range(0, len(query_ids), batch), desc="dense search", unit="batch", disable=not progress):
        scores = queries[start : start + batch] @ docs.T
        top = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < len(doc_ids)
            else np.tile(np.arange(len(doc_ids)), (scores.shape[0], 1))
        )
        for row in range(scores.shape[0]):
            run[query_ids[start + row]] = {doc_ids[j]: float(scores[row, j]) for j in top[row]}
    return run


# -- fusion, rerank, passages -> pages --------------------------------------------------------


def top(scores: Mapping[str, float], k: int) -> list[str]:
    return ranking(scores)[:k]


def rrf(
    runs: Sequence[Mapping[str, float]],
    k: int = RRF_K,
    depth: int | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Reciprocal rank fusion: score(d) = sum over runs of w / (k + rank of d), ranks from 1 (w = 1
    unless ``weights`` gives one per run)."""
    fused: dict[str, float] = {}
    for n, run in enumerate(runs):
        w = 1.0 if weights is None else weights[n]
        for rank, d in enumerate(ranking(run), 1):
            fused[d] = fused.get(d, 0.0) + w / (k + rank)
    return {d: fused[d] for d in top(fused, depth)} if depth else fused


async def rerank_runs(
    reranker: Reranker,
    runs: Sequence[Run],
    query_text: Mapping[str, str],
    doc_text: Mapping[str, str],
    k: int,
    *,
    batch: int = 128,
    concurrency: int = 4,
    progress: bool = True,
) -> list[Run]:
    """Rerank the top-k of each run. Each query's candidates (the union over ``runs``) are scored
    once, so reranking several first stages costs one pass."""
    queries = list(runs[0])
    out: list[Run] = [{} for _ in runs]
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(queries), desc="rerank", unit="query", disable=not progress)

    async def one(q: str) -> None:
        heads = [top(run.get(q, {}), k) for run in runs]
        candidates = sorted(set().union(*heads))
        scores: dict[str, float] = {}
        async with gate:
            for i in range(0, len(candidates), batch):
                chunk = candidates[i : i + batch]
                values = await reranker.rerank(query_text[q], [doc_text[d] for d in chunk])
                scores.update(zip(chunk, values))
        for n, head in enumerate(heads):
            out[n][q] = {d: scores[d] for d in head}
        bar.update(1)

    try:
        await asyncio.gather(*(one(q) for q in queries))
    finally:
        bar.close()
    return out


def to_pages(run: Run, doc_page: Mapping[str, str]) -> Run:
    """Passage run -> page run: a page is retrieved if any of its passages is, scored by its best (MaxP)."""
    pages: Run = {}
    for q, scores in run.items():
        best: dict[str, float] = {}
        for d, s in scores.items():
            p = doc_page.get(d, d)
            if p not in best or s > best[p]:
                best[p] = s
        pages[q] = best
    return pages
