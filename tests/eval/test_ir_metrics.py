"""Recall@k, nDCG@10, MRR@10 vs ir-measures (pytrec_eval) on the same TREC run files; RRF; MaxP."""

from __future__ import annotations

import math
import random

import pytest

from rankserve.eval import metrics
from rankserve.eval.pipeline import read_run, write_run
from rankserve.eval.retrieval import rrf, to_pages

ir_measures = pytest.importorskip("ir_measures", reason="ir-measures is a dev dependency")
MEASURES = {"Recall@5": "R@5", "Recall@10": "R@10", "nDCG@10": "nDCG@10", "MRR@10": "RR@10"}


def random_case(seed: int, ties: bool, depth: int = 30):
    """Runs with graded and zero relevance and unjudged documents; with ``ties``, scores rounded to
    one decimal so many documents share a score."""
    rng = random.Random(seed)
    docs = [f"d{i:03d}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        rel = rng.sample(docs, rng.randint(1, 6))
        qrels[qid] = {d: rng.choice([1, 1, 2, 3]) for d in rel}
        qrels[qid][rng.choice(docs)] = 0  # judged non-relevant
        retrieved = rng.sample(docs, rng.randint(3, depth)) + rel[: rng.randint(0, len(rel))]
        run[qid] = {d: round(rng.random(), 1) if ties else rng.random() for d in retrieved}
    return run, qrels


def through_file(tmp_path, run):
    path = tmp_path / "run.trec"
    write_run(path, run, "test")
    from_file = read_run(path)
    assert from_file == run
    return path, from_file


def ir_measures_values(path, qrels, names):
    measures = [ir_measures.parse_measure(MEASURES[n]) for n in names]
    values = {
        (m.query_id, str(m.measure)): m.value
        for m in ir_measures.iter_calc(measures, qrels, ir_measures.read_trec_run(str(path)))
    }
    aggregate = ir_measures.calc_aggregate(measures, qrels, ir_measures.read_trec_run(str(path)))
    return values, {n: aggregate[ir_measures.parse_measure(MEASURES[n])] for n in names}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_ir_measures_on_run_files(tmp_path, seed, ties):
    """Recall and nDCG (pytrec_eval provider) on every case; RR@10 (ir-measures' msmarco provider,
    which orders tied scores its own way) where no scores tie; tied MRR is checked below."""
    run, qrels = random_case(seed, ties)
    path, from_file = through_file(tmp_path, run)
    names = ["Recall@5", "Recall@10", "nDCG@10"] + ([] if ties else ["MRR@10"])
    theirs, aggregate = ir_measures_values(path, qrels, names)
    ours = metrics.per_query(from_file, qrels)
    assert len(theirs) == len(ours) * len(names)
    for q, values in ours.items():
        for name in names:
            assert values[name] == pytest.approx(theirs[(q, MEASURES[name])], abs=1e-9), (q, name)
    ours_mean = metrics.evaluate(from_file, qrels)
    for name in names:
        assert ours_mean[name] == pytest.approx(aggregate[name], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mrr_with_ties_matches_trec_eval(tmp_path, seed):
    """trec_eval's recip_rank (ties: doc id descending) on runs of at most 10 documents, where it equals RR@10."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run, qrels = random_case(seed, ties=True, depth=10)
    run = {q: dict(list(docs.items())[:10]) for q, docs in run.items()}
    path, from_file = through_file(tmp_path, run)
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(read_run(path))
    for q, values in metrics.per_query(from_file, qrels).items():
        assert values["MRR@10"] == pytest.approx(theirs[q]["recip_rank"], abs=1e-9), q


def test_hand_computed_values():
    qrels = {"q": {"a": 1, "b": 2}}
    run = {"q": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.1}}
    m = metrics.evaluate(run, qrels)
    assert m["Recall@5"] == 1.0 and m["MRR@10"] == 0.5
    # DCG = 1/log2(3) + 2/log2(5); ideal = 2/log2(2) + 1/log2(3)
    assert m["nDCG@10"] == pytest.approx((1 / 1.5849625 + 2 / 2.3219281) / (2 + 1 / 1.5849625), abs=1e-6)


def test_ties_break_by_doc_id_descending_like_trec_eval():
    assert metrics.ranking({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]


def test_unanswered_and_unjudged_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has nothing relevant: not counted
    run = {"q1": {"a": 1.0}}  # q2 missing from the run: counts as 0
    assert metrics.judged(qrels) == ["q1", "q2"]
    assert metrics.evaluate(run, qrels)["Recall@10"] == 0.5


def test_recall_beyond_k_is_not_counted():
    run = {"q": {f"d{i}": 10.0 - i for i in range(10)}}
    assert metrics.evaluate(run, {"q": {"d5": 1}})["Recall@5"] == 0.0
    assert metrics.evaluate(run, {"q": {"d5": 1}})["Recall@10"] == 1.0
    assert metrics.evaluate(run, {"q": {"d5": 1}})["MRR@10"] == pytest.approx(1 / 6)


def test_rrf_k60():
    dense = {"a": 0.9, "b": 0.8, "c": 0.7}
    sparse = {"c": 12.0, "d": 3.0}
    fused = rrf([dense, sparse])
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d"] == pytest.approx(1 / 62)
    assert metrics.ranking(fused)[0] == "c"
    assert list(rrf([dense, sparse], depth=2)) == ["c", "a"]


def test_rrf_uses_ranks_not_scores():
    assert rrf([{"a": 1000.0, "b": 0.1}]) == rrf([{"a": 0.2, "b": 0.1}])


def test_passages_score_pages_by_their_best_passage():
    run = {"q": {"ls.1#0": 0.2, "ls.1#3": 0.9, "cp.1#0": 0.5, "mv.1": 0.4}}
    pages = to_pages(run, {"ls.1#0": "ls.1", "ls.1#3": "ls.1", "cp.1#0": "cp.1"})
    assert pages == {"q": {"ls.1": 0.9, "cp.1": 0.5, "mv.1": 0.4}}


def test_weighted_rrf_scales_each_runs_share():
    fused = rrf([{"a": 2.0, "b": 1.0}, {"b": 5.0}], weights=[0.25, 0.75])
    assert fused["a"] == pytest.approx(0.25 / 61)
    assert fused["b"] == pytest.approx(0.25 / 62 + 0.75 / 61)


def test_fuse_rerank_weight_ends_are_the_reranker_and_the_first_stage():
    from rankserve.eval.pipeline import fuse_rerank

    first = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    reranked = {"q": {"a": 0.1, "b": 0.9, "c": 0.5}}
    runs = {"Dense": first, "Dense+Rerank": reranked, "Dense+Sparse": first, "Dense+Sparse+Rerank": reranked}
    assert metrics.ranking(fuse_rerank(runs, 1.0)["Dense+Rerank"]["q"]) == ["b", "c", "a"]
    assert metrics.ranking(fuse_rerank(runs, 0.0)["Dense+Sparse+Rerank"]["q"]) == ["a", "b", "c"]
    assert metrics.ranking(fuse_rerank(runs, 0.5)["Dense+Rerank"]["q"])[0] == "b"  # 1/62+1/61 beats 1/61+1/63
    assert fuse_rerank(runs, 0.5)["Dense"] is first  # first stages untouched
    with pytest.raises(ValueError):
        fuse_rerank(runs, 1.5)


def test_choose_rerank_weight_finds_the_blend_that_beats_both_ends():
    """q1: the first stage ranks the relevant document second and the reranker first; q2 the reverse.
    The fused list ranks both first for 0.337 < w < 0.663 (worked by hand), neither end does."""
    from rankserve.eval.pipeline import choose_rerank_weight

    first = {"q1": {"b": 3, "a": 2, "c": 1}, "q2": {"x": 3, "y": 2, "z": 1}}
    reranked = {"q1": {"a": 3, "c": 2, "b": 1}, "q2": {"z": 3, "x": 2, "y": 1}}
    qrels = {"q1": {"a": 1}, "q2": {"x": 1}}
    runs = {"Dense": first, "Dense+Rerank": reranked, "Dense+Sparse": first, "Dense+Sparse+Rerank": reranked}
    best, scores = choose_rerank_weight(runs, qrels)
    assert scores[0.0] < 1.0 and scores[1.0] < 1.0
    assert [w for w, v in scores.items() if v == pytest.approx(1.0)] == [0.4, 0.5, 0.6]
    assert best == 0.6  # ties go to the larger weight


def test_paired_p_value_equals_the_exact_permutation_test():
    """Against scipy's exact paired permutation test (all 2^12 sign patterns) on 12 queries."""
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    rng = random.Random(3)
    a = {f"q{i}": rng.random() for i in range(12)}
    b = {q: v - 0.15 + 0.3 * rng.random() for q, v in a.items()}
    qs = sorted(a)
    exact = scipy_stats.permutation_test(
        (np.array([a[q] for q in qs]), np.array([b[q] for q in qs])),
        lambda x, y: np.mean(x - y),
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=np.inf,
    ).pvalue
    assert metrics.paired_p_value(a, b, rounds=20_000) == pytest.approx(exact, abs=0.015)
    assert metrics.paired_p_value(a, a) == 1.0
    # 40 queries all one point better: only 2 of 2^40 sign patterns reach it
    assert (
        metrics.paired_p_value({f"q{i}": 1.0 for i in range(40)}, {f"q{i}": 0.0 for i in range(40)}, rounds=999)
        == 1 / 1000
    )


def test_rerank_lift_reports_the_difference_and_its_p_value():
    from rankserve.eval.pipeline import rerank_lift

    qrels = {f"q{i}": {"rel": 1} for i in range(30)}
    first = {q: {"other": 2.0, "rel": 1.0} for q in qrels}  # relevant document second everywhere
    better = {q: {"rel": 2.0, "other": 1.0} for q in qrels}  # ... and first after the rerank
    runs = {"Dense": first, "Dense+Rerank": better, "Dense+Sparse": first, "Dense+Sparse+Rerank": first}
    lift = rerank_lift({name: metrics.per_query(run, qrels) for name, run in runs.items()})
    ndcg = 1 - 1 / math.log2(3)
    assert lift["Dense+Rerank vs Dense"]["nDCG@10"]["delta"] == pytest.approx(ndcg)
    assert lift["Dense+Rerank vs Dense"]["nDCG@10"]["p"] < 0.001
    assert lift["Dense+Rerank vs Dense"]["Recall@5"] == {"delta": 0.0, "p": 1.0}
    assert lift["Dense+Sparse+Rerank vs Dense+Sparse"]["nDCG@10"] == {"delta": 0.0, "p": 1.0}


def test_ids_with_whitespace_are_refused_where_run_files_and_datasets_are_written(tmp_path):
    """A TREC line splits on whitespace: ``coreutils:Output of parts`` would read back as a doc id
    ``coreutils:Output`` and a score ``of``. Writers refuse it instead of writing what cannot be read."""
    from rankserve.eval import beir

    with pytest.raises(ValueError, match="no whitespace"):
        write_run(tmp_path / "run.trec", {"q1": {"man:Output of parts": 1.0}}, "test")
    with pytest.raises(ValueError, match="no whitespace"):
        beir.write(tmp_path / "ds", [{"_id": "a b", "text": "x"}], [{"_id": "q", "text": "y"}], {"q": {"a b": 1}})
    assert beir.check_id("coreutils:Output_of_parts") == "coreutils:Output_of_parts"
