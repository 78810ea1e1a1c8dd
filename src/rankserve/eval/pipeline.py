"""One dataset through the five pipelines of NVIDIA's hybrid-retrieval table, with time per stage.

    Sparse               BM25 top-k
    Dense                exact cosine top-k over the embedder's vectors
    Dense+Rerank         the reranker re-scores Dense's top-k
    Dense+Sparse         reciprocal rank fusion (k=60) of Dense and Sparse, top-k
    Dense+Sparse+Rerank  the reranker re-scores the fused top-k
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rankserve.eval import metrics
from rankserve.eval.beir import Dataset
from rankserve.eval.clients import Embedder, Reranker
from rankserve.eval.retrieval import (Run, bm25_search, dense_search, embed_cached, rerank_runs, rrf, to_pages,
                                      tokenize)

PIPELINES = ("Sparse", "Dense", "Dense+Rerank", "Dense+Sparse", "Dense+Sparse+Rerank")


@dataclass
class DatasetResult:
    name: str
    sizes: dict[str, int]
    metrics: dict[str, dict[str, float]]  # pipeline -> metric -> value
    per_lang: dict[str, dict[str, dict[str, float]]]  # query language -> pipeline -> metric -> value
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    cached: dict[str, bool] = field(default_factory=dict)  # "embed corpus"/"embed queries" -> from cache
    runs: dict[str, Run] = field(default_factory=dict)


@dataclass
class Options:
    top_k: int = 100
    cache_dir: Path | None = None
    batch_size: int = 64
    concurrency: int = 4
    lang: str = "en"  # BM25 language for texts without metadata.lang
    progress: bool = True


async def run_dataset(ds: Dataset, embedder: Embedder, reranker: Reranker, opts: Options) -> DatasetResult:
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str):
        start = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - start, 3)

    k, progress = opts.top_k, opts.progress
    with stage("sparse"):
        doc_tokens = [tokenize(t, ds.doc_lang.get(d, opts.lang)) for d, t in zip(ds.doc_ids, ds.doc_texts)]
        query_tokens = [tokenize(t, ds.query_lang.get(q, opts.lang)) for q, t in zip(ds.query_ids, ds.query_texts)]
        sparse = bm25_search(ds.doc_ids, doc_tokens, ds.query_ids, query_tokens, k, progress)
        del doc_tokens
    kw = dict(batch_size=opts.batch_size, concurrency=opts.concurrency, progress=progress)
    cached = {}
    with stage("embed corpus"):
        doc_vecs, cached["embed corpus"] = await embed_cached(
            embedder, ds.doc_texts, "passage", ds.fingerprint("corpus"), opts.cache_dir, desc=f"{ds.name}: corpus", **kw)
    with stage("embed queries"):
        query_vecs, cached["embed queries"] = await embed_cached(
            embedder, ds.query_texts, "query", ds.fingerprint("queries"), opts.cache_dir, desc=f"{ds.name}: queries",
            **kw)
    with stage("dense search"):
        dense = dense_search(ds.doc_ids, doc_vecs, ds.query_ids, query_vecs, k, progress=progress)
    with stage("fusion"):
        fused = {q: rrf([dense[q], sparse[q]], depth=k) for q in ds.query_ids}
    with stage("rerank"):
        dense_rr, fused_rr = await rerank_runs(
            reranker, [dense, fused], dict(zip(ds.query_ids, ds.query_texts)), dict(zip(ds.doc_ids, ds.doc_texts)),
            k, concurrency=getattr(reranker, "rerank_concurrency", opts.concurrency), progress=progress)
    runs = {"Sparse": sparse, "Dense": dense, "Dense+Rerank": dense_rr, "Dense+Sparse": fused,
            "Dense+Sparse+Rerank": fused_rr}
    if ds.doc_page:
        runs = {name: to_pages(run, ds.doc_page) for name, run in runs.items()}

    with stage("metrics"):
        per_query = {name: metrics.per_query(run, ds.qrels) for name, run in runs.items()}
        scores = {name: metrics.mean(per_query[name]) for name in PIPELINES}
        per_lang = {}
        langs = sorted({ds.query_lang[q] for q in ds.query_ids if q in ds.query_lang})
        if len(langs) > 1:
            for lang in langs:
                qs = [q for q in metrics.judged(ds.qrels) if ds.query_lang.get(q) == lang]
                per_lang[lang] = {name: metrics.mean(per_query[name], qs) for name in PIPELINES}

    pages = set(ds.doc_page.get(d, d) for d in ds.doc_ids)
    sizes = {"documents": len(ds.doc_ids), "pages": len(pages), "queries": len(metrics.judged(ds.qrels))}
    return DatasetResult(ds.name, sizes, scores, per_lang, timings, cached, runs)


def macro_average(results: list[DatasetResult]) -> dict[str, dict[str, float]]:
    """Each dataset weighs the same (as the "avg" column of NVIDIA's table)."""
    return {p: {m: sum(r.metrics[p][m] for r in results) / len(results) for m in metrics.METRICS}
            for p in PIPELINES}


def write_run(path: Path, run: Run, tag: str) -> None:
    """TREC run format: ``qid Q0 docid rank score tag``, best first; scores written exactly (repr)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q in sorted(run):
            for rank, d in enumerate(metrics.ranking(run[q]), 1):
                f.write(f"{q} Q0 {d} {rank} {run[q][d]!r} {tag}\n")


def read_run(path: Path) -> Run:
    run: Run = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q, _, d, _, score, *_ = line.split()
                run.setdefault(q, {})[d] = float(score)
    return run
