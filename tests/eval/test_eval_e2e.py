"""``rankserve eval`` end to end on small slices: the default model in-process, the same over HTTP
against a live server, and a cross-encoder reranker (tiny random checkpoint)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from rankserve.eval import beir
from rankserve.eval.commands import add_commands
from rankserve.eval.metrics import METRICS, evaluate, ranking
from rankserve.eval.pipeline import PIPELINES, read_run

MAN = Path("/usr/share/man")
ir_measures = pytest.importorskip("ir_measures", reason="ir-measures is a dev dependency")


def rankserve(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rankserve")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def man_slice(tmp_path_factory) -> Path:
    """English and German->English man pages, 12 of each (built from the installed man tree)."""
    if not ((MAN / "man1" / "ls.1.gz").is_file() and (MAN / "de" / "man1").is_dir()):
        pytest.skip("man pages not installed: apt-get install manpages manpages-dev manpages-de groff-base")
    if not (shutil.which("groff") or shutil.which("mandoc")):
        pytest.skip("no man renderer: apt-get install groff-base")
    out = tmp_path_factory.mktemp("manpages")
    assert rankserve("data", "manpages", "--langs", "en", "--cross", "de", "--max-pages", "12", "--granularity",
                     "pages", "--out", out, "--no-progress") == 0
    return out / "pages"


@pytest.fixture(scope="module")
def in_process(man_slice, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-local")
    assert rankserve("eval", "--dataset", man_slice, "--output", out, "--cache-dir", out / "cache", "--no-progress") == 0
    return out


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_outputs(in_process, capsys):
    table = results(in_process)
    assert list(table) == list(PIPELINES)
    for pipeline in PIPELINES:
        assert list(table[pipeline]) == list(METRICS)
        assert all(0.0 <= v <= 1.0 for v in table[pipeline].values())
        assert table[pipeline]["Recall@10"] >= table[pipeline]["Recall@5"]
    md = (in_process / "results.md").read_text()
    assert "| Pipeline | Recall@5 | Recall@10 | nDCG@10 | MRR@10 |" in md and "| Dense+Sparse+Rerank |" in md
    assert (in_process / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    details = json.loads((in_process / "details.json").read_text())
    assert set(details["datasets"]) == {"en", "de-en"}
    assert details["datasets"]["en"]["sizes"] == {"documents": 12, "pages": 12, "queries": 12}
    assert {"sparse", "embed corpus", "dense search", "fusion", "rerank"} <= set(details["datasets"]["en"]["seconds"])


def test_real_retrieval_quality(in_process):
    details = json.loads((in_process / "details.json").read_text())
    en = details["datasets"]["en"]["metrics"]
    # A man page's own description finds it among 12 pages, lexically and semantically.
    assert en["Sparse"]["Recall@10"] >= 0.6 and en["Dense"]["Recall@10"] >= 0.6
    # The default reranker is the embedder itself (cosine): Dense+Rerank re-sorts Dense by the same scores.
    for m in METRICS:
        assert en["Dense+Rerank"][m] == pytest.approx(en["Dense"][m], abs=1e-6)


def test_metrics_agree_with_ir_measures_on_the_written_runs(in_process, man_slice):
    qrels = beir.load(man_slice / "en").qrels
    for pipeline in PIPELINES:
        path = in_process / "runs" / "en" / f"{pipeline}.trec"
        ours = evaluate(read_run(path), qrels)
        theirs = ir_measures.calc_aggregate([ir_measures.R @ 5, ir_measures.nDCG @ 10], qrels,
                                            ir_measures.read_trec_run(str(path)))
        assert ours["Recall@5"] == pytest.approx(theirs[ir_measures.R @ 5], abs=1e-9)
        assert ours["nDCG@10"] == pytest.approx(theirs[ir_measures.nDCG @ 10], abs=1e-9)
        stored = json.loads((in_process / "details.json").read_text())["datasets"]["en"]["metrics"][pipeline]
        assert stored == pytest.approx(ours, abs=1e-12)


def test_second_run_reads_embeddings_from_the_cache(in_process, man_slice, tmp_path):
    assert rankserve("eval", "--dataset", man_slice / "en", "--output", tmp_path, "--cache-dir", in_process / "cache",
                     "--no-progress") == 0
    details = json.loads((tmp_path / "details.json").read_text())
    assert details["datasets"]["en"]["cached"] == {"embed corpus": True, "embed queries": True}
    assert results(tmp_path) == json.loads((in_process / "details.json").read_text())["datasets"]["en"]["metrics"]


def test_over_http_matches_in_process(in_process, man_slice, live_default, tmp_path):
    """Same default model behind /v1/embeddings and /v1/ranking: the same table."""
    assert rankserve("eval", "--dataset", man_slice, "--output", tmp_path, "--embed-url", live_default.url,
                     "--rerank-url", live_default.url + "/v1", "--no-cache", "--no-progress") == 0
    details = json.loads((tmp_path / "details.json").read_text())
    assert details["settings"]["embedder"] == f"http:{live_default.url}:sentence-transformers/all-MiniLM-L6-v2"
    local, remote = results(in_process), results(tmp_path)
    for pipeline in PIPELINES:
        for m in METRICS:
            assert remote[pipeline][m] == pytest.approx(local[pipeline][m], abs=0.02), (pipeline, m)
    for pipeline in ("Sparse", "Dense"):
        a = read_run(in_process / "runs" / "en" / f"{pipeline}.trec")
        b = read_run(tmp_path / "runs" / "en" / f"{pipeline}.trec")
        assert a.keys() == b.keys()
        agree = sum(ranking(a[q])[:5] == ranking(b[q])[:5] for q in a)
        assert agree >= len(a) - 1


def write_toy(path: Path) -> None:
    """Eight pages, each cut in two passages (``metadata.page``), four queries."""
    topics = ["list directory contents", "copy files and directories", "print the system date and time",
              "show disk space usage", "search text for a pattern", "compress an archive", "count lines in files",
              "remove files or directories"]
    corpus = []
    for i, t in enumerate(topics):
        corpus.append({"_id": f"p{i}#0", "text": f"This command can {t}.", "metadata": {"page": f"p{i}"}})
        corpus.append({"_id": f"p{i}#1", "text": f"Options and examples for page {i}.", "metadata": {"page": f"p{i}"}})
    queries = [{"_id": f"q{i}", "text": topics[i]} for i in range(0, 8, 2)]
    beir.write(path, corpus, queries, {f"q{i}": {f"p{i}": 1} for i in range(0, 8, 2)})


def test_cross_encoder_reranker_and_passages(bert_ce_dir, tmp_path):
    data, out = tmp_path / "toy", tmp_path / "out"
    write_toy(data)
    assert rankserve("eval", "--dataset", data, "--output", out, "--reranker", bert_ce_dir, "--top-k", "20",
                     "--no-cache", "--no-progress") == 0
    details = json.loads((out / "details.json").read_text())
    assert details["settings"]["reranker"].startswith("local:bert:cross-encoder:")
    assert details["datasets"]["toy"]["sizes"] == {"documents": 16, "pages": 8, "queries": 4}
    dense = read_run(out / "runs" / "toy" / "Dense.trec")
    reranked = read_run(out / "runs" / "toy" / "Dense+Rerank.trec")
    for q in dense:
        assert all(d.startswith("p") and "#" not in d for d in dense[q])  # passages scored as pages
        assert set(reranked[q]) == set(dense[q])  # top-k covers the corpus: every page, reranked
    # The run holds the cross-encoder's scores: check one page against the engine directly.
    import asyncio

    from rankserve.eval.clients import LocalEngine

    async def score(query: str, passages: list[str]) -> list[float]:
        engine = await LocalEngine.open(str(bert_ce_dir))
        try:
            return await engine.rerank(query, passages)
        finally:
            await engine.close()

    q0 = reranked["q0"]
    page = ranking(q0)[0]
    both = asyncio.run(score("list directory contents", [c["text"] for c in map(json.loads, (data / "corpus.jsonl")
                                                          .read_text().splitlines()) if c["metadata"]["page"] == page]))
    assert q0[page] == pytest.approx(max(both), abs=1e-5)


def test_bad_dataset_is_one_line_error(tmp_path, capsys):
    assert rankserve("eval", "--dataset", tmp_path / "missing", "--output", tmp_path / "out", "--no-progress") == 2
    assert "no corpus.jsonl" in capsys.readouterr().err


def test_unreachable_server_is_one_line_error(tmp_path, capsys):
    from conftest import free_port

    write_toy(tmp_path / "toy")
    url = f"http://127.0.0.1:{free_port()}"
    assert rankserve("eval", "--dataset", tmp_path / "toy", "--output", tmp_path / "out", "--embed-url", url,
                     "--no-progress") == 2
    assert f"{url}/v1/models: ConnectError" in capsys.readouterr().err
