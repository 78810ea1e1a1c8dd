"""Training examples from a BEIR dataset: each query's positive passage and its hard negatives.

Hard negatives are what rankserve's own first stages retrieve for the query (BM25, the dense
embedder, or both interleaved) minus everything relevant: with passage datasets (``metadata.page``)
no passage of a relevant page is ever a negative. The mined lists are cached on disk, keyed by the
data, the method, the depth and the embedder, because mining costs a corpus embedding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rankserve.eval.beir import Dataset
from rankserve.eval.clients import Embedder
from rankserve.eval.retrieval import bm25_search, dense_search, embed_cached, tokenize
from rankserve.train import METHODS


@dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negatives: tuple[str, ...]


def page_of(ds: Dataset, doc: str) -> str:
    return ds.doc_page.get(doc, doc)


def passage_number(doc: str) -> int:
    """``page#3`` -> 3 (the man-page builder's passage ids); 0 for a page-level id."""
    _, _, n = doc.rpartition("#")
    return int(n) if n.isdigit() else 0


def positives(ds: Dataset) -> dict[str, str]:
    """Query id -> its positive document: the relevant page itself, or (passage datasets) the first
    passage of the relevant page, where a man page states what it is for. Queries whose relevant
    page has no document are skipped."""
    first: dict[str, str] = {}
    for doc in ds.doc_ids:
        page = page_of(ds, doc)
        if page not in first or passage_number(doc) < passage_number(first[page]):
            first[page] = doc
    out = {}
    for q in ds.query_ids:
        relevant = sorted(p for p, grade in ds.qrels.get(q, {}).items() if grade > 0 and p in first)
        if relevant:
            out[q] = first[relevant[0]]
    return out


def _cache_file(cache_dir: Path, ds: Dataset, method: str, k: int, embedder: str) -> Path:
    key = hashlib.sha256("\0".join([ds.fingerprint("corpus"), ds.fingerprint("queries"), method, str(k),
                                    embedder]).encode()).hexdigest()[:24]
    return cache_dir / f"negatives-{key}.json"


async def mine(ds: Dataset, method: str, k: int, embedder: Embedder | None, cache_dir: Path | None = None,
               lang: str = "en", progress: bool = True) -> dict[str, list[str]]:
    """Query id -> up to ``k`` hard negatives (document ids), best-ranked first, never relevant."""
    if method not in METHODS:
        raise ValueError(f"negatives from {method!r}: choose {', '.join(METHODS)}")
    identity = embedder.identity if embedder is not None and method != "bm25" else "-"
    path = _cache_file(cache_dir, ds, method, k, identity) if cache_dir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    depth = min(len(ds.doc_ids), 4 * k + 20)  # room for the relevant pages' passages that are dropped
    runs = []
    if method in ("bm25", "both"):
        doc_tokens = [tokenize(t, ds.doc_lang.get(d, lang)) for d, t in zip(ds.doc_ids, ds.doc_texts)]
        query_tokens = [tokenize(t, ds.query_lang.get(q, lang)) for q, t in zip(ds.query_ids, ds.query_texts)]
        runs.append(bm25_search(ds.doc_ids, doc_tokens, ds.query_ids, query_tokens, depth, progress))
    if method in ("dense", "both"):
        if embedder is None:
            raise ValueError("dense negatives need an embedder")
        docs, _ = await embed_cached(embedder, ds.doc_texts, "passage", ds.fingerprint("corpus"), cache_dir,
                                     progress=progress, desc="mining: corpus")
        queries, _ = await embed_cached(embedder, ds.query_texts, "query", ds.fingerprint("queries"), cache_dir,
                                        progress=progress, desc="mining: queries")
        runs.append(dense_search(ds.doc_ids, docs, ds.query_ids, queries, depth, progress=progress))
    out: dict[str, list[str]] = {}
    for q in ds.query_ids:
        relevant = {p for p, grade in ds.qrels.get(q, {}).items() if grade > 0}
        ranked = [sorted(run.get(q, {}), key=lambda d, r=run.get(q, {}): (-r[d], d)) for run in runs]
        picked: list[str] = []
        for rank in range(max(map(len, ranked), default=0)):  # interleave the stages, best first
            for lst in ranked:
                if rank < len(lst) and page_of(ds, lst[rank]) not in relevant and lst[rank] not in picked:
                    picked.append(lst[rank])
        out[q] = picked[:k]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    return out


def examples(ds: Dataset, negatives: dict[str, list[str]]) -> list[Example]:
    """One example per query with a positive: its text, the positive's and the negatives' texts."""
    text = dict(zip(ds.doc_ids, ds.doc_texts))
    query_text = dict(zip(ds.query_ids, ds.query_texts))
    return [Example(query_text[q], text[pos], tuple(text[d] for d in negatives.get(q, [])))
            for q, pos in positives(ds).items()]
