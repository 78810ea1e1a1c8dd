"""Training examples from a BEIR dataset: each query's positive passage and its hard negatives.

Hard negatives are what rankserve's own first stages retrieve for the query (BM25, the dense
embedder, or both interleaved) minus everything relevant: with passage datasets (``metadata.page``)
no passage of a relevant page is ever a negative. The mined lists are cached on disk, keyed by the
data, the method, the depth, the embedder and the passage choice, because mining costs a corpus
embedding.

Passage datasets: the positive is the relevant page's *first* passage (where a man page says what
it is for). Negatives are by default the passages as retrieved (``position="any"``): on the man-page
split only 23 % of them are first passages, which invites the shortcut "an opening passage is
relevant", so ``"first"`` (each retrieved page's first passage, the positive's position) is offered.
Measured, "first" ranked worse on held-out pages (nDCG@10 57.2 vs 66.4, bench/train_ablations.py):
evaluation scores every passage of a page (MaxP), and a model that never saw a non-first passage in
training scores them erratically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankserve.eval.beir import Dataset
from rankserve.eval.clients import Embedder
from rankserve.eval.retrieval import (
    bm25_search,
    corpus_tokens,
    dense_search,
    embed_cached,
    query_tokens,
    tokenize,
    unit,
)
from rankserve.train import METHODS, POSITIONS, TEACHERS


@dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negatives: tuple[str, ...]
    teacher: tuple[float, ...] = ()  # the teacher's score of the positive, then each negative (distill)


def page_of(ds: Dataset, doc: str) -> str:
    return ds.doc_page.get(doc, doc)


def passage_number(doc: str) -> int:
    """``page#3`` -> 3 (the man-page builder's passage ids); 0 for a page-level id."""
    _, _, n = doc.rpartition("#")
    return int(n) if n.isdigit() else 0


def first_passages(ds: Dataset) -> dict[str, str]:
    """Page -> its first document (the page itself for page-level datasets)."""
    first: dict[str, str] = {}
    for doc in ds.doc_ids:
        page = page_of(ds, doc)
        if page not in first or passage_number(doc) < passage_number(first[page]):
            first[page] = doc
    return first


def positives(ds: Dataset) -> dict[str, str]:
    """Query id -> its positive document: the relevant page itself, or (passage datasets) the first
    passage of the relevant page, where a man page states what it is for. Queries whose relevant
    page has no document are skipped."""
    first = first_passages(ds)
    out = {}
    for q in ds.query_ids:
        relevant = sorted(p for p, grade in ds.qrels.get(q, {}).items() if grade > 0 and p in first)
        if relevant:
            out[q] = first[relevant[0]]
    return out


def _cache_file(cache_dir: Path, ds: Dataset, method: str, k: int, embedder: str, position: str) -> Path:
    parts = [ds.fingerprint("corpus"), ds.fingerprint("queries"), method, str(k), embedder]
    if position != "any":  # "any" keeps the key of the caches written before the choice existed
        parts.append(position)
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return cache_dir / f"negatives-{key}.json"


async def embeddings(
    ds: Dataset, embedder: Embedder, cache_dir: Path | None, progress: bool, stage: str
) -> tuple[np.ndarray, np.ndarray]:
    """(corpus, query) embeddings of ``ds``, cached: mining computes them, the teacher reuses them."""
    out = []
    for texts, input_type, part in ((ds.doc_texts, "passage", "corpus"), (ds.query_texts, "query", "queries")):
        vectors, _ = await embed_cached(
            embedder, texts, input_type, ds.fingerprint(part), cache_dir, progress=progress, desc=f"{stage}: {part}"
        )
        out.append(vectors)
    return out[0], out[1]


async def mine(
    ds: Dataset,
    method: str,
    k: int,
    embedder: Embedder | None,
    cache_dir: Path | None = None,
    lang: str = "en",
    progress: bool = True,
    position: str = "any",
) -> dict[str, list[str]]:
    """Query id -> up to ``k`` hard negatives (document ids), best-ranked first, never relevant.
    ``position`` (passage datasets): "any" = the passages as retrieved, "first" = each retrieved
    page's first passage (the positive's position)."""
    if method not in METHODS:
        raise ValueError(f"negatives from {method!r}: choose {', '.join(METHODS)}")
    if position not in POSITIONS:
        raise ValueError(f"negative passages {position!r}: choose {', '.join(POSITIONS)}")
    identity = embedder.identity if embedder is not None and method != "bm25" else "-"
    path = _cache_file(cache_dir, ds, method, k, identity, position) if cache_dir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    depth = min(len(ds.doc_ids), 4 * k + 20)  # room for the relevant pages' passages that are dropped
    runs = []
    if method in ("bm25", "both"):
        runs.append(
            bm25_search(ds.doc_ids, corpus_tokens(ds, lang), ds.query_ids, query_tokens(ds, lang), depth, progress)
        )
    if method in ("dense", "both"):
        if embedder is None:
            raise ValueError("dense negatives need an embedder")
        docs, queries = await embeddings(ds, embedder, cache_dir, progress, "mining")
        runs.append(dense_search(ds.doc_ids, docs, ds.query_ids, queries, depth, progress=progress))
    first = first_passages(ds) if position == "first" and ds.doc_page else None
    out: dict[str, list[str]] = {}
    for q in ds.query_ids:
        relevant = {p for p, grade in ds.qrels.get(q, {}).items() if grade > 0}
        ranked = [sorted(run.get(q, {}), key=lambda d, r=run.get(q, {}): (-r[d], d)) for run in runs]
        picked: list[str] = []
        for rank in range(max(map(len, ranked), default=0)):  # interleave the stages, best first
            for lst in ranked:
                if rank >= len(lst) or page_of(ds, lst[rank]) in relevant:
                    continue
                doc = lst[rank] if first is None else first[page_of(ds, lst[rank])]
                if doc not in picked:
                    picked.append(doc)
        out[q] = picked[:k]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    return out


async def teacher_scores(
    ds: Dataset,
    negatives: dict[str, list[str]],
    embedder: Embedder,
    cache_dir: Path | None = None,
    progress: bool = True,
    stages: str = "dense",
    scale: float = 20.0,
    lang: str = "en",
) -> dict[str, list[float]]:
    """Query id -> the teacher's score of the query with its positive, then with each mined
    negative: the scores ``--loss distill`` pulls the cross-encoder toward, so that it keeps what the
    first stages know where the few labels here say nothing.

    ``stages="dense"``: the embedder's cosines (a bi-encoder trained on a billion pairs; the
    embeddings are the ones mining cached). ``"both"``: the two first stages' agreement, the mean
    of the embedder's distribution (softmax of ``scale`` x cosine) and BM25's (softmax of bm25s'
    raw score), returned as log(mixture) / ``scale`` so that ``fit.distill_target``'s softmax of
    ``scale`` x score gives that mixture back. Why: Dense+Sparse beats either stage alone on every
    corpus here, so their agreement is the better teacher of how near misses rank."""
    if stages not in TEACHERS:
        raise ValueError(f"teacher {stages!r}: choose {', '.join(TEACHERS)}")
    docs, queries = await embeddings(ds, embedder, cache_dir, progress, "teacher")
    docs, queries = unit(docs.astype(np.float32, copy=False)), unit(queries.astype(np.float32, copy=False))
    row = {d: i for i, d in enumerate(ds.doc_ids)}
    qrow = {q: i for i, q in enumerate(ds.query_ids)}
    bm25 = bm25_scorer(ds, lang, progress) if stages == "both" else None
    out = {}
    for q, pos in positives(ds).items():
        rows = [row[d] for d in [pos, *negatives.get(q, [])]]
        cos = docs[rows] @ queries[qrow[q]]
        if bm25 is None:
            out[q] = [float(x) for x in cos]
            continue
        lexical = bm25(ds.query_texts[qrow[q]], ds.query_lang.get(q, lang))[rows]
        mixture = 0.5 * softmax(scale * cos.astype(np.float64)) + 0.5 * softmax(lexical.astype(np.float64))
        out[q] = [float(x) for x in np.log(mixture) / scale]
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def bm25_scorer(ds: Dataset, lang: str, progress: bool) -> Callable[[str, str], np.ndarray]:
    """query text, language -> bm25s' score of every document of ``ds`` (the eval's BM25 settings)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(corpus_tokens(ds, lang), show_progress=progress)
    return lambda text, query_lang: np.asarray(retriever.get_scores(tokenize(text, query_lang)), dtype=np.float32)


def examples(
    ds: Dataset, negatives: dict[str, list[str]], teacher: dict[str, list[float]] | None = None
) -> list[Example]:
    """One example per query with a positive: its text, the positive's and the negatives' texts
    (and, given ``teacher_scores``, the embedder's scores for them)."""
    text = dict(zip(ds.doc_ids, ds.doc_texts))
    query_text = dict(zip(ds.query_ids, ds.query_texts))
    return [
        Example(
            query_text[q],
            text[pos],
            tuple(text[d] for d in negatives.get(q, [])),
            tuple(teacher.get(q, ())) if teacher is not None else (),
        )
        for q, pos in positives(ds).items()
    ]
