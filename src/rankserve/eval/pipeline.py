"""One dataset through the five pipelines of NVIDIA's hybrid-retrieval table, with time per stage.

    Sparse               BM25 top-k
    Dense                exact cosine top-k over the embedder's vectors
    Dense+Rerank         the reranker re-scores Dense's top-k
    Dense+Sparse         reciprocal rank fusion (k=60) of Dense and Sparse, top-k
    Dense+Sparse+Rerank  the reranker re-scores the fused top-k

With a rerank weight w (``Options.rerank_weight``), each +Rerank list is instead fused with the
list it re-scored: weighted RRF, w on the reranker's ranks and 1 - w on the first stage's (w = 1 is
the reranker's order alone, w = 0 the first stage's). ``rankserve train --validation-fraction``
chooses w on validation pages (``choose_rerank_weight``), never on the test split.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rankserve.eval import beir, metrics
from rankserve.eval.beir import Dataset
from rankserve.eval.clients import Embedder, Reranker
from rankserve.eval.retrieval import (
    Run,
    bm25_search,
    corpus_tokens,
    dense_search,
    embed_cached,
    query_tokens,
    rerank_runs,
    rrf,
    to_pages,
)

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
    lift: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # see rerank_lift


@dataclass
class Options:
    top_k: int = 100
    cache_dir: Path | None = None
    batch_size: int = 64
    concurrency: int = 4
    lang: str = "en"  # BM25 language for texts without metadata.lang
    progress: bool = True
    rerank_weight: float | None = None  # None: +Rerank = the reranker's order; else fused (fuse_rerank)


async def run_dataset(ds: Dataset, embedder: Embedder, reranker: Reranker, opts: Options) -> DatasetResult:
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str):
        start = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - start, 3)

    k, progress = opts.top_k, opts.progress
    with stage("sparse"):
        doc_tokens = corpus_tokens(ds, opts.lang)
        sparse = bm25_search(ds.doc_ids, doc_tokens, ds.query_ids, query_tokens(ds, opts.lang), k, progress)
        del doc_tokens
    kw = dict(batch_size=opts.batch_size, concurrency=opts.concurrency, progress=progress)
    cached = {}
    with stage("embed corpus"):
        doc_vecs, cached["embed corpus"] = await embed_cached(
            embedder, ds.doc_texts, "passage", ds.fingerprint("corpus"), opts.cache_dir, desc=f"{ds.name}: corpus", **kw
        )
    with stage("embed queries"):
        query_vecs, cached["embed queries"] = await embed_cached(
            embedder,
            ds.query_texts,
            "query",
            ds.fingerprint("queries"),
            opts.cache_dir,
            desc=f"{ds.name}: queries",
            **kw,
        )
    with stage("dense search"):
        dense = dense_search(ds.doc_ids, doc_vecs, ds.query_ids, query_vecs, k, progress=progress)
    with stage("fusion"):
        fused = {q: rrf([dense[q], sparse[q]], depth=k) for q in ds.query_ids}
    with stage("rerank"):
        dense_rr, fused_rr = await rerank_runs(
            reranker,
            [dense, fused],
            dict(zip(ds.query_ids, ds.query_texts)),
            dict(zip(ds.doc_ids, ds.doc_texts)),
            k,
            concurrency=getattr(reranker, "rerank_concurrency", opts.concurrency),
            progress=progress,
        )
    runs = {
        "Sparse": sparse,
        "Dense": dense,
        "Dense+Rerank": dense_rr,
        "Dense+Sparse": fused,
        "Dense+Sparse+Rerank": fused_rr,
    }
    if ds.doc_page:
        runs = {name: to_pages(run, ds.doc_page) for name, run in runs.items()}
    if opts.rerank_weight is not None:
        runs = fuse_rerank(runs, opts.rerank_weight)

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
    return DatasetResult(ds.name, sizes, scores, per_lang, timings, cached, runs, rerank_lift(per_query))


RERANKED = {"Dense+Rerank": "Dense", "Dense+Sparse+Rerank": "Dense+Sparse"}  # +Rerank list -> what it re-scored
WEIGHT_GRID = tuple(n / 10 for n in range(11))


def fuse_rerank(runs: dict[str, Run], weight: float) -> dict[str, Run]:
    """``runs`` with each +Rerank list replaced by the weighted RRF of it (``weight``) and the first
    stage it re-scored (1 - ``weight``). Fusing ranks, not scores, needs no calibration between a
    cross-encoder's logits and a cosine or BM25 score."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"rerank weight {weight}: must be in [0, 1]")
    out = dict(runs)
    for reranked, first in RERANKED.items():
        out[reranked] = {
            q: rrf([runs[first][q], scores], weights=[1.0 - weight, weight]) for q, scores in runs[reranked].items()
        }
    return out


def choose_rerank_weight(
    runs: dict[str, Run],
    qrels: dict[str, dict[str, int]],
    metric: str = "nDCG@10",
    grid: tuple[float, ...] = WEIGHT_GRID,
) -> tuple[float, dict[float, float]]:
    """The weight on ``grid`` whose fused +Rerank lists score best on ``metric`` (mean over both
    +Rerank pipelines), and every weight's score. Ties go to the larger weight (more of the reranker).
    Call it on validation runs only: a weight picked on the test split says nothing about new data."""
    scores = {}
    for w in grid:
        fused = fuse_rerank(runs, w)
        scores[w] = sum(metrics.mean(metrics.per_query(fused[p], qrels))[metric] for p in RERANKED) / len(RERANKED)
    best = max(grid, key=lambda w: (round(scores[w], 12), w))
    return best, scores


LIFT_METRICS = ("Recall@5", "nDCG@10")


def rerank_lift(per_query: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """What each +Rerank list changes against the first stage it re-scored, per metric, from the
    pipelines' per-query values (``metrics.per_query``: the judged queries): the mean difference and
    its paired randomization p-value. A few points on a few hundred queries can be noise; the p-value
    says how likely a difference that large is by chance."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for reranked, first in RERANKED.items():
        after, before = per_query[reranked], per_query[first]
        out[f"{reranked} vs {first}"] = {
            m: {
                "delta": sum(after[q][m] - before[q][m] for q in after) / max(1, len(after)),
                "p": metrics.paired_p_value({q: v[m] for q, v in after.items()}, {q: v[m] for q, v in before.items()}),
            }
            for m in LIFT_METRICS
        }
    return out


def macro_average(results: list[DatasetResult]) -> dict[str, dict[str, float]]:
    """Each dataset weighs the same (as the "avg" column of NVIDIA's table)."""
    return {p: {m: sum(r.metrics[p][m] for r in results) / len(results) for m in metrics.METRICS} for p in PIPELINES}


def write_run(path: Path, run: Run, tag: str) -> None:
    """TREC run format: ``qid Q0 docid rank score tag``, best first; scores written exactly (repr).
    An id with whitespace is refused (``beir.check_id``): it would not read back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q in sorted(run):
            for rank, d in enumerate(metrics.ranking(run[q]), 1):
                f.write(f"{beir.check_id(q)} Q0 {beir.check_id(d)} {rank} {run[q][d]!r} {tag}\n")


def read_run(path: Path) -> Run:
    run: Run = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q, _, d, _, score, *_ = line.split()
                run.setdefault(q, {})[d] = float(score)
    return run
