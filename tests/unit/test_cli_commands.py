"""`rankserve rank`, `rankserve embed` and `rankserve bench` as real subprocesses (README "Offline
one-shots" and "Load-test"), checked against what a live server on 127.0.0.1 returns for the same input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERY = "How do I list the files in a directory?"
PASSAGES = [
    "Bananas are a good source of potassium.",
    "Paris is the capital of France.",
    "The ls command lists the contents of a directory.",
    "Tea is brewed from dried leaves.",
]
RELEVANT = 2


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m rankserve.cli ARGS`` with this interpreter and environment (PYTHONPATH included)."""
    return subprocess.run(
        [sys.executable, "-m", "rankserve.cli", *args], capture_output=True, text=True, timeout=300, env={**os.environ}
    )


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on the server's /v1/metrics whose labels include ``labels``."""
    text = httpx.get(url + "/v1/metrics", timeout=30).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_rank_prints_the_servers_rankings(live_default):
    out = cli("rank", QUERY, *PASSAGES, "--dtype", "float32")  # as the test server (conftest.TEST_DTYPE)
    assert out.returncode == 0, out.stderr
    rankings = json.loads(out.stdout)["rankings"]
    indices = [r["index"] for r in rankings]
    logits = [r["logit"] for r in rankings]
    assert sorted(indices) == list(range(len(PASSAGES)))  # a permutation: every passage once
    assert logits == sorted(logits, reverse=True)
    assert indices[0] == RELEVANT

    r = httpx.post(
        live_default.url + "/v1/ranking",
        timeout=60,
        json={"model": MODEL, "query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]},
    )
    assert r.status_code == 200, r.text
    served = r.json()["rankings"]
    assert [s["index"] for s in served] == indices
    np.testing.assert_allclose(logits, [s["logit"] for s in served], rtol=0, atol=1e-5)


def test_embed_dimensions_128_prints_the_servers_unit_vectors(live_default):
    texts = [QUERY, PASSAGES[RELEVANT], "hello world"]
    out = cli("embed", *texts, "--dimensions", "128", "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    got = np.asarray(json.loads(out.stdout)["embeddings"], dtype=np.float64)
    assert got.shape == (len(texts), 128)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=0, atol=1e-5)

    r = httpx.post(
        live_default.url + "/v1/embeddings",
        timeout=60,
        json={"model": MODEL, "input": texts, "dimensions": 128, "encoding_format": "float"},
    )
    assert r.status_code == 200, r.text
    served = np.asarray([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])])
    assert served.shape == got.shape
    np.testing.assert_allclose(got, served, rtol=0, atol=1e-5)
    # Not the server's full 384-d vector cut short: the first 128 components renormalized.
    full = httpx.post(
        live_default.url + "/v1/embeddings",
        timeout=60,
        json={"model": MODEL, "input": texts, "encoding_format": "float"},
    ).json()["data"]
    head = np.asarray([d["embedding"][:128] for d in sorted(full, key=lambda d: d["index"])])
    np.testing.assert_allclose(got, head / np.linalg.norm(head, axis=1, keepdims=True), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["folder-without-config", "missing-path"])
def test_rank_with_a_non_model_dir_exits_nonzero_with_one_line(tmp_path, kind):
    model = tmp_path / "not-a-model"
    if kind == "folder-without-config":
        model.mkdir()
        (model / "README.txt").write_text("no model here")
    out = cli("rank", "--model", str(model), QUERY, *PASSAGES[:2])
    assert out.returncode != 0
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("rankserve: ") and str(model) in lines[0], lines[0]


def parse_table(stdout: str) -> list[dict[str, float]]:
    """The markdown table `rankserve bench` prints -> one dict per row, keyed by header."""
    rows = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert set(rows[1].replace("|", "").replace("-", "").replace(":", "").strip()) == set()  # the rule line
    return [
        dict(zip(header, (float(c) if c.strip() != "n/a" else None for c in row.strip("|").split("|"))))
        for row in rows[2:]
    ]


def test_bench_against_the_live_server(live_default, tmp_path):
    url, requests, passages, levels = live_default.url, 6, 3, (1, 2)
    warmup = 2  # loadgen.run's default: unmeasured requests sent first
    ok_before = metric(url, "rankserve_requests_total", route="/v1/ranking", status="200")
    all_before = metric(url, "rankserve_requests_total", route="/v1/ranking")
    pairs_before = metric(url, "rankserve_passage_cache_hits_total") + metric(
        url, "rankserve_passage_cache_misses_total"
    )

    out = cli(
        "bench",
        "--url",
        url,
        "--concurrency",
        ",".join(map(str, levels)),
        "--requests",
        str(requests),
        "--passages",
        str(passages),
        "--tokens",
        "4-16",
        "--json",
        str(tmp_path / "bench.json"),
    )
    assert out.returncode == 0, out.stdout + out.stderr

    results = json.loads((tmp_path / "bench.json").read_text())
    assert [r["concurrency"] for r in results] == list(levels)
    for r in results:
        assert r["requests"] == requests and r["errors"] == 0
        assert r["pairs"] == requests * passages
        assert r["seconds"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert math.isclose(r["requests_per_s"], r["requests"] / r["seconds"], rel_tol=1e-9)
        assert math.isclose(r["pairs_per_s"], r["pairs"] / r["seconds"], rel_tol=1e-9)

    table = parse_table(out.stdout)
    assert len(table) == len(results)
    for row, r in zip(table, results):
        assert row["clients"] == r["concurrency"] and row["requests"] == r["requests"] and row["errors"] == 0
        assert row["req/s"] == pytest.approx(r["requests_per_s"], abs=0.006)
        assert row["pairs/s"] == pytest.approx(r["pairs_per_s"], abs=0.06)
        assert row["p50 ms"] == pytest.approx(r["p50_ms"], abs=0.6)
        # The default model is a bi-encoder whose passage vectors are cached: fresh passages per level
        # mean no level is answered from the cache the one before filled.
        assert row["cache hits"] == r["cache_hits"] == 0
    assert "passage cache" not in out.stdout

    # What the server saw: every request sent was answered 200, with every passage ranked.
    sent = warmup + requests * len(levels)
    assert metric(url, "rankserve_requests_total", route="/v1/ranking", status="200") - ok_before == sent
    assert metric(url, "rankserve_requests_total", route="/v1/ranking") - all_before == sent
    pairs = metric(url, "rankserve_passage_cache_hits_total") + metric(url, "rankserve_passage_cache_misses_total")
    assert pairs - pairs_before == sent * passages


def test_bench_same_passages_reports_the_cache_hits(live_default, tmp_path):
    """--same-passages repeats level 1's requests: level 2 is all cache hits, and the output says so."""
    out = cli(
        "bench",
        "--url",
        live_default.url,
        "--concurrency",
        "1,2",
        "--requests",
        "3",
        "--passages",
        "2",
        "--tokens",
        "4-8",
        "--seed",
        "5",
        "--same-passages",
        "--json",
        str(tmp_path / "bench.json"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    first, second = json.loads((tmp_path / "bench.json").read_text())
    assert first["cache_hits"] == 0 and second["cache_hits"] == second["pairs"] == 6
    assert "2 clients: 6 of 6 pairs came from the server's passage cache" in out.stdout


def test_bench_counts_refused_requests_as_errors_and_exits_1(live_default, tmp_path):
    """A model id the server does not serve: every request is a 400, counted as an error, exit 1."""
    before = metric(live_default.url, "rankserve_requests_total", route="/v1/ranking", status="400")
    out = cli(
        "bench",
        "--url",
        live_default.url,
        "--model",
        "not-served/model",
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--passages",
        "2",
        "--tokens",
        "4-8",
        "--json",
        str(tmp_path / "bench.json"),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    [r] = json.loads((tmp_path / "bench.json").read_text())
    assert r["requests"] == 0 and r["errors"] == 4 and r["pairs"] == 0
    [row] = parse_table(out.stdout)
    assert row["requests"] == 0 and row["errors"] == 4
    assert metric(live_default.url, "rankserve_requests_total", route="/v1/ranking", status="400") - before == 2 + 4


def test_rank_reads_a_file_or_stdin_and_asks_a_server(live_default, tmp_path):
    """Passages from JSON Lines / plain lines (file or stdin); --url goes through rankserve.Client and
    prints what the in-process run prints; --format table lists the passages best first."""
    jsonl = tmp_path / "passages.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": p}) if i % 2 else json.dumps(p) for i, p in enumerate(PASSAGES)) + "\n\n"
    )
    local = json.loads(cli("rank", QUERY, "--file", str(jsonl), "--dtype", "float32").stdout)["rankings"]
    remote = cli("rank", QUERY, "--file", str(jsonl), "--url", live_default.url)
    assert remote.returncode == 0, remote.stderr
    served = json.loads(remote.stdout)["rankings"]
    assert [r["index"] for r in served] == [r["index"] for r in local]
    np.testing.assert_allclose([r["logit"] for r in served], [r["logit"] for r in local], rtol=0, atol=1e-5)
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankserve.cli",
            "rank",
            QUERY,
            "--file",
            "-",
            "--url",
            live_default.url,
            "--format",
            "table",
        ],
        input="\n".join(PASSAGES),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr
    header, *lines = piped.stdout.splitlines()
    assert header.split() == ["rank", "logit", "[index]", "passage"]
    assert len(lines) == len(PASSAGES) and PASSAGES[RELEVANT][:50] in lines[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    failed = cli("rank", QUERY, "--file", str(bad))
    assert failed.returncode == 2 and "bad.jsonl:2" in failed.stderr


def test_version_prints_the_package_version():
    from rankserve import __version__

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"rankserve {__version__}"


def test_embed_via_url_equals_in_process(live_default):
    texts = [QUERY, PASSAGES[RELEVANT]]
    local = json.loads(cli("embed", *texts, "--dtype", "float32").stdout)["embeddings"]
    remote = cli("embed", *texts, "--url", live_default.url)
    assert remote.returncode == 0, remote.stderr
    np.testing.assert_allclose(json.loads(remote.stdout)["embeddings"], local, rtol=0, atol=1e-5)


def test_rank_a_file_longer_than_the_servers_limit_in_steps_with_a_progress_bar(live_default, tmp_path):
    """1,100 passages (the server takes 1,000 per request) go in steps of cli.STEP; each passage keeps
    its own index and logit (checked against one-passage requests), and --progress draws a bar on
    stderr while a non-terminal stderr stays clean by default."""
    from rankserve.cli import STEP

    passages = [f"passage {i}: " + ("files and directories" if i % 7 == 0 else "weather and rain") for i in range(1100)]
    assert len(passages) > 1000 and len(passages) > 2 * STEP
    path = tmp_path / "many.txt"
    path.write_text("\n".join(passages))
    shown = cli("rank", QUERY, "--file", str(path), "--url", live_default.url, "--progress")
    assert shown.returncode == 0, shown.stderr
    assert "1100/1100" in shown.stderr and "passages" in shown.stderr
    ranked = json.loads(shown.stdout)["rankings"]
    assert sorted(r["index"] for r in ranked) == list(range(1100))
    logits = {r["index"]: r["logit"] for r in ranked}
    for i in (0, STEP - 1, STEP, 2 * STEP + 3, 1099):
        [one] = httpx.post(
            live_default.url + "/v1/ranking", json={"query": {"text": QUERY}, "passages": [{"text": passages[i]}]}
        ).json()["rankings"]
        assert logits[i] == pytest.approx(one["logit"], abs=1e-5)
    quiet = cli("rank", QUERY, "--file", str(path), "--url", live_default.url)
    assert quiet.returncode == 0 and "1100" not in quiet.stderr
    assert [r["index"] for r in json.loads(quiet.stdout)["rankings"]] == [r["index"] for r in ranked]
    local = cli("embed", "--file", str(path), "--dtype", "float32", "--progress")
    assert local.returncode == 0 and "1100/1100" in local.stderr
    assert len(json.loads(local.stdout)["embeddings"]) == 1100
