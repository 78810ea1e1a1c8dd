"""A short run of ``bench/soak.py`` against a live ``rankserve serve`` child process (default model).

- soak: 16 clients for ~8 s, valid requests on every rerank/embeddings route checked against
  rankserve's own Engine in this process (scores and vectors within 1e-5, exact token counts), and
  ~20 % invalid ones (empty query, lone surrogates, wrong types, NaN, unknown model, broken JSON):
  0 lost, 0 wrong, 0 5xx, every invalid request a 4xx with an error object.
- overload: ``--max-queue-requests 4`` and 24 heavy requests at once: 503 + Retry-After for the rest,
  fast, every admitted request a correct 200, the queue empty afterwards.
- sigterm: SIGTERM once 8 heavy requests are admitted: all answered correctly, readiness 503
  ``draining``, new requests 503 ``shutting_down`` or refused, exit -15 within the drain timeout.

About 35 s on 2 cores. The long run is ``python bench/soak.py`` (64 clients, 60 s).
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("rankserve_bench_soak", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    bench = load_bench()
    opts = bench.Options(
        clients=16,
        seconds=8,
        min_valid=21,
        min_invalid=6,
        distinct=32,
        passage_pool=64,
        timeout=120,
        overload_queue=4,
        overload_requests=24,
        overload_passages=16,
        overload_waves=1,
        sigterm_requests=8,
        sigterm_passages=24,
        drain_timeout=30,
        log_dir=str(tmp_path_factory.mktemp("soak-logs")),
        serve_args=("--dtype", "float32"),  # answers are checked at 1e-5: the exact path (conftest.TEST_DTYPE)
    )
    ref = bench.Reference(opts)
    yield bench, opts, ref
    ref.close()


def explain(bench, phase: str, result: dict) -> str:
    return bench.table(phase, result)


def test_soak_mixed_valid_and_invalid_traffic(soak):
    bench, opts, ref = soak
    r = bench.run_soak(opts, ref)
    print(explain(bench, "soak", r))
    assert r["valid_sent"] > 20 and r["invalid_sent"] > 5, explain(bench, "soak", r)
    assert r["lost"] == 0 and r["wrong"] == 0 and r["status_5xx"] == 0, explain(bench, "soak", r)
    assert r["valid_ok"] == r["valid_sent"] and r["valid_4xx"] == 0, explain(bench, "soak", r)
    assert r["invalid_4xx"] == r["invalid_sent"], explain(bench, "soak", r)
    assert r["rss_before_mb"] and r["rss_after_mb"], explain(bench, "soak", r)
    assert r["ok"], explain(bench, "soak", r)


def test_overload_gets_fast_503s_and_admitted_requests_succeed(soak):
    bench, opts, ref = soak
    r = bench.run_overload(opts, ref)
    print(explain(bench, "overload", r))
    assert r["status_503"] > 0 and r["503_without_retry_after"] == 0, explain(bench, "overload", r)
    assert r["status_200"] >= opts.overload_queue, explain(bench, "overload", r)
    assert r["correct_200"] == r["status_200"] and r["wrong"] == 0, explain(bench, "overload", r)
    assert r["lost"] == 0 and r["other_status"] == 0, explain(bench, "overload", r)
    assert r["status_200"] + r["status_503"] == r["sent"], explain(bench, "overload", r)
    assert r["ok"], explain(bench, "overload", r)


def test_sigterm_drains_admitted_requests_then_exits(soak):
    bench, opts, ref = soak
    r = bench.run_sigterm(opts, ref)
    print(explain(bench, "sigterm", r))
    assert r["inflight_200_correct"] == r["inflight"], explain(bench, "sigterm", r)
    assert r["ready_503_draining"] > 0 and r["ready_200_after_sigterm"] == 0, explain(bench, "sigterm", r)
    assert r["late_other"] == 0, explain(bench, "sigterm", r)
    assert r["exit_code"] in (0, -15, 143), explain(bench, "sigterm", r)
    assert r["ok"], explain(bench, "sigterm", r)


def test_passages_flag_sets_each_requests_passage_count(soak):
    bench, _opts, ref = soak
    assert bench.passage_range("1-30") == (1, 30) and bench.passage_range("5") == (5, 5)
    with pytest.raises(ValueError, match="LOW-HIGH"):
        bench.passage_range("3-1")
    calls = bench.soak_pool(random.Random(0), ref, 40, 200, (25, 30))
    assert {len(c.texts) for c in calls} <= set(range(25, 31)) and len({len(c.texts) for c in calls}) > 1


def test_latency_by_size_groups_requests_by_their_size():
    """The per-size table that shows where the soak's tail comes from (big requests, or all)."""
    bench = load_bench()
    sizes = [1, 2, 10, 11, 20, 21, 30]
    ms = [10.0, 20.0, 30.0, 100.0, 200.0, 1000.0, 3000.0]
    table = bench.latency_by_size(sizes, ms)
    assert list(table) == ["1-10", "11-20", "21-30"]
    assert [row["n"] for row in table.values()] == [3, 2, 2]
    assert table["1-10"]["max_ms"] == 30.0 and table["21-30"]["max_ms"] == 3000.0
    assert table["11-20"]["p50_ms"] == 150.0
    assert bench.latency_by_size([], []) == {}
