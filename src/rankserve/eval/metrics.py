"""Recall@k, nDCG@10 and MRR@10 from a run and qrels, computed as trec_eval computes them.

- run: ``{query_id: {doc_id: score}}``; qrels: ``{query_id: {doc_id: relevance}}``.
- Documents are ranked by score, ties broken by doc id descending (trec_eval's order), so these
  numbers equal ``ir-measures`` / ``pytrec_eval`` on the same run files.
- A document is relevant when its relevance is >= 1; nDCG gains are the relevance values.
- Averages are over the queries in qrels that have a relevant document; a query missing from the
  run scores 0 (trec_eval ``-c``). ``per_query`` gives the values before averaging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
METRICS = ("Recall@5", "Recall@10", "nDCG@10", "MRR@10")


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Doc ids best first: score descending, then doc id descending (as trec_eval sorts)."""
    by_id = sorted(scores, reverse=True)
    return sorted(by_id, key=lambda d: -scores[d])  # stable: equal scores keep id-descending order


def recall_at(ranked: list[str], rels: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r >= 1}
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def ndcg_at(ranked: list[str], rels: Mapping[str, int], k: int) -> float:
    dcg = sum(max(rels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg


def mrr_at(ranked: list[str], rels: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def query_metrics(scores: Mapping[str, float], rels: Mapping[str, int]) -> dict[str, float]:
    ranked = ranking(scores)
    return {
        "Recall@5": recall_at(ranked, rels, 5),
        "Recall@10": recall_at(ranked, rels, 10),
        "nDCG@10": ndcg_at(ranked, rels, 10),
        "MRR@10": mrr_at(ranked, rels, 10),
    }


def judged(qrels: Qrels) -> list[str]:
    """Queries that count: those with at least one relevant document."""
    return sorted(q for q, rels in qrels.items() if any(r >= 1 for r in rels.values()))


def per_query(run: Run, qrels: Qrels) -> dict[str, dict[str, float]]:
    return {q: query_metrics(run.get(q, {}), qrels[q]) for q in judged(qrels)}


def mean(values: Mapping[str, Mapping[str, float]], queries: list[str] | None = None) -> dict[str, float]:
    """Average per-query metrics over ``queries`` (default: all); 0.0 for an empty set."""
    queries = list(values) if queries is None else queries
    if not queries:
        return {m: 0.0 for m in METRICS}
    return {m: sum(values[q][m] for q in queries) / len(queries) for m in METRICS}


def evaluate(run: Run, qrels: Qrels) -> dict[str, float]:
    return mean(per_query(run, qrels))


def paired_p_value(a: Mapping[str, float], b: Mapping[str, float], rounds: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that per-query values ``a`` and ``b`` (same queries) have the same mean:
    Fisher's paired randomization test, the one IR papers use for such differences (Smucker et al.,
    CIKM 2007). Each round flips the sign of every query's difference at random; p = (1 + rounds
    whose |mean| reaches the observed one) / (1 + rounds). Seeded, so a report is reproducible."""
    import numpy as np

    diffs = np.array([a[q] - b[q] for q in sorted(a)], dtype=np.float64)
    if not diffs.size or not diffs.any():
        return 1.0
    observed = abs(diffs.mean()) - 1e-12  # a round that ties the observed difference counts
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, rounds, 1000):  # 1,000 rounds at a time bounds memory for large query sets
        signs = rng.integers(0, 2, size=(min(1000, rounds - start), diffs.size), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ diffs) / diffs.size >= observed).sum())
    return (1 + hits) / (1 + rounds)
