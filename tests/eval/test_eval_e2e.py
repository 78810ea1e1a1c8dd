"""``rankserve eval`` end to end on small slices: the default model in-process, the same over HTTP
against a live server, and a cross-encoder reranker (tiny random checkpoint)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require

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
    require(
        (MAN / "man1" / "ls.1.gz").is_file() and (MAN / "de" / "man1").is_dir(),
        f"English and German man pages not installed under {MAN}",
        "apt-get install manpages manpages-dev manpages-de groff-base",
    )
    require(
        bool(shutil.which("groff") or shutil.which("mandoc")),
        "no man renderer (groff or mandoc) on PATH",
        "apt-get install groff-base",
    )
    out = tmp_path_factory.mktemp("manpages")
    assert (
        rankserve(
            "data",
            "manpages",
            "--langs",
            "en",
            "--cross",
            "de",
            "--max-pages",
            "12",
            "--granularity",
            "pages",
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    return out / "pages"


@pytest.fixture(scope="module")
def in_process(man_slice, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-local")
    assert (
        rankserve("eval", "--dataset", man_slice, "--output", out, "--cache-dir", out / "cache", "--no-progress") == 0
    )
    return out


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def md_table(md: str, header_start: str) -> tuple[list[str], dict[str, list[float]]]:
    """The Markdown table whose header line starts with ``header_start``: (column labels, row label -> numbers)."""
    lines = md.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[at].strip("|").split("|")]
    body = {}
    for line in lines[at + 2 :]:
        if not line.startswith("|"):
            break
        label, *cells = [c.strip() for c in line.strip("|").split("|")]
        body[label] = [float(c.rstrip("*")) for c in cells]
    return header[1:], body


def bar_heights(png: Path, color: str) -> list[int]:
    """Heights in pixels, left to right, of the bars of one matplotlib colour standing on the chart's baseline."""
    import matplotlib.colors
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]
    mask = np.abs(img - np.array(matplotlib.colors.to_rgb(color))).max(axis=-1) < 0.02
    bottoms = {c: int(np.flatnonzero(mask[:, c])[-1]) for c in np.flatnonzero(mask.any(axis=0))}
    baseline = max(bottoms.values())
    cols = [c for c, b in bottoms.items() if b == baseline]  # legend swatches float above the baseline
    heights, run = [], []
    for c in cols + [None]:
        if run and (c is None or c != run[-1] + 1):
            column_heights = []
            for x in run:  # contiguous pixels upward from the baseline
                rows = mask[: baseline + 1, x][::-1]
                column_heights.append(int(np.argmin(rows)) if not rows.all() else len(rows))
            heights.append(max(column_heights))
            run = []
        if c is not None:
            run.append(c)
    return heights


def test_outputs(in_process):
    """results.json is the macro average of details.json's per-dataset metrics (report.py: "averaged over
    datasets"); results.md shows the same numbers (in %, one decimal); results.png draws them."""
    table = results(in_process)
    details = json.loads((in_process / "details.json").read_text())
    datasets = details["datasets"]
    assert set(datasets) == {"en", "de-en"}
    assert details["datasets"]["en"]["sizes"] == {"documents": 12, "pages": 12, "queries": 12}
    assert {"sparse", "embed corpus", "dense search", "fusion", "rerank"} <= set(details["datasets"]["en"]["seconds"])
    assert list(table) == list(PIPELINES)
    for pipeline in PIPELINES:
        assert list(table[pipeline]) == list(METRICS)
        for m in METRICS:
            mean = sum(d["metrics"][pipeline][m] for d in datasets.values()) / len(datasets)
            assert table[pipeline][m] == pytest.approx(mean, abs=1e-12), (pipeline, m)
    assert details["average"] == table
    # No dataset mixes query languages, so the per-dataset rows are the datasets' metrics.
    assert details["rows"] == {name: d["metrics"] for name, d in datasets.items()}
    # The two datasets differ (German queries vs English ones), so an average of one of them would show.
    assert datasets["en"]["metrics"]["Sparse"] != datasets["de-en"]["metrics"]["Sparse"]

    md = (in_process / "results.md").read_text()
    assert f"Embedder: `{details['settings']['embedder']}`" in md
    columns, body = md_table(md, "| Pipeline | Recall@5 |")
    assert columns == list(METRICS) and list(body) == list(PIPELINES)
    for pipeline in PIPELINES:
        for m, shown in zip(METRICS, body[pipeline]):
            assert shown == pytest.approx(100 * table[pipeline][m], abs=0.05 + 1e-9), (pipeline, m)
    for metric in ("Recall@5", "nDCG@10"):
        columns, body = md_table(md.split(f"{metric} per dataset / language:", 1)[1], "| Pipeline |")
        assert columns == [*details["rows"], "avg"] and list(body) == list(PIPELINES)
        for pipeline in PIPELINES:
            for label, shown in zip(columns, body[pipeline]):
                value = table[pipeline][metric] if label == "avg" else datasets[label]["metrics"][pipeline][metric]
                assert shown == pytest.approx(100 * value, abs=0.05 + 1e-9), (metric, pipeline, label)
    _, sizes = md_table(md, "| Dataset | documents |")
    assert sizes == {
        name: [float(d["sizes"][k]) for k in ("documents", "pages", "queries")] for name, d in datasets.items()
    }

    png = in_process / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert 400 <= width <= 4000 and 200 <= height <= 3000, (width, height)
    # One bar per dataset and one for the average, per pipeline (colours C0..C4), each as tall as its Recall@5.
    groups = [*details["rows"], "avg"]  # report.chart: the rows, then their average
    heights = {p: bar_heights(png, f"C{i}") for i, p in enumerate(PIPELINES)}
    values = {
        p: [100 * (table[p]["Recall@5"] if g == "avg" else datasets[g]["metrics"][p]["Recall@5"]) for g in groups]
        for p in PIPELINES
    }
    px_per_pct = max(max(h) for h in heights.values()) / max(max(v) for v in values.values())
    assert px_per_pct > 1.0  # at least 100 pixels for 100 %
    for p in PIPELINES:
        expected = [round(v * px_per_pct) for v in values[p] if v > 0]
        assert len(heights[p]) == len(expected) and np.allclose(heights[p], expected, atol=3), (p, heights[p], expected)


def read_slice(path: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """corpus, queries and qrels read straight from the BEIR files (not through rankserve.eval.beir)."""
    corpus = {d["_id"]: d["text"] for d in map(json.loads, (path / "corpus.jsonl").read_text().splitlines())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (path / "queries.jsonl").read_text().splitlines())}
    qrels: dict[str, dict[str, int]] = {}
    for row in (path / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, rel = row.split("\t")
        qrels.setdefault(q, {})[d] = int(rel)
    return corpus, queries, qrels


MEASURES = {
    "Recall@5": ir_measures.R @ 5,
    "Recall@10": ir_measures.R @ 10,
    "nDCG@10": ir_measures.nDCG @ 10,
    "MRR@10": ir_measures.RR @ 10,
}


def ir_eval(run, qrels) -> dict[str, float]:
    agg = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
    return {m: agg[measure] for m, measure in MEASURES.items()}


def chance(qrels: dict[str, dict[str, int]], n_docs: int) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking when each query has one relevant page among n_docs:
    its rank is uniform on 1..n_docs."""
    assert all(sum(r >= 1 for r in rels.values()) == 1 for rels in qrels.values())
    ranks = range(1, n_docs + 1)
    return {
        "Recall@5": sum(r <= 5 for r in ranks) / n_docs,
        "Recall@10": sum(r <= 10 for r in ranks) / n_docs,
        "nDCG@10": sum(1 / np.log2(r + 1) for r in ranks if r <= 10) / n_docs,
        "MRR@10": sum(1 / r for r in ranks if r <= 10) / n_docs,
    }


def test_real_retrieval_quality(in_process, man_slice):
    """Against an independent reference (sentence-transformers' own cosine retrieval of the same slice)
    and against what a constant or random scorer gets on the same slice.

    Measured (this slice, Debian 12.11's man pages): rankserve's Dense cosines equal sentence-transformers'
    within 2.5e-7 and its metrics are identical (en: R@5 1.0, nDCG@10 0.953, MRR@10 0.938; de-en: 1.0,
    0.798, 0.732). Chance on 12 pages: R@5 0.417, nDCG@10 0.379, MRR@10 0.244 (a constant score gets
    exactly that here; 200 random rankings: mean 0.44/0.39/0.25, sd 0.13/0.08/0.08, max 0.83/0.60/0.52).
    en, every pipeline: Sparse 1.0/0.938/0.917, Dense+Sparse 1.0/1.0/1.0.
    """
    from sentence_transformers import SentenceTransformer

    from rankserve.models.model_dir import default_model_dir

    details = json.loads((in_process / "details.json").read_text())
    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    for name in ("en", "de-en"):
        corpus, queries, qrels = read_slice(man_slice / name)
        doc_ids, query_ids = list(corpus), list(qrels)
        docs = model.encode([corpus[d] for d in doc_ids], normalize_embeddings=True, convert_to_numpy=True)
        qs = model.encode([queries[q] for q in query_ids], normalize_embeddings=True, convert_to_numpy=True)
        cos = qs @ docs.T
        reference = {q: {d: float(cos[i, j]) for j, d in enumerate(doc_ids)} for i, q in enumerate(query_ids)}
        dense = read_run(in_process / "runs" / name / "Dense.trec")
        # The same cosines, pair by pair (measured <= 2.5e-7; README promises cosine >= 0.99999 per vector).
        assert dense.keys() == reference.keys()
        for q in reference:
            assert dense[q].keys() == reference[q].keys(), q
            worst = max(abs(dense[q][d] - reference[q][d]) for d in reference[q])
            assert worst <= 1e-3, (name, q, worst)
        # And so the same metrics: a per-query metric is in [0, 1], so 1/queries is one query ranking differently.
        ours, theirs = details["datasets"][name]["metrics"]["Dense"], ir_eval(reference, qrels)
        for m in ("Recall@5", "nDCG@10", "MRR@10"):
            assert ours[m] == pytest.approx(theirs[m], abs=1 / len(qrels)), (name, m, ours[m], theirs[m])

    # Every pipeline on the English slice (a page's own NAME line as the query) must close at least half of
    # the gap between chance and perfect; a constant or random embedder, or a BM25 that does not rank,
    # sits at chance (nDCG/MRR thresholds are 4-5 sd above a random ranking's mean).
    def baseline(name: str) -> dict[str, float]:
        corpus, _, qrels = read_slice(man_slice / name)
        constant = ir_eval({q: {d: 0.0 for d in corpus} for q in qrels}, qrels)
        return {m: max(v, constant[m]) for m, v in chance(qrels, len(corpus)).items()}

    en, base = details["datasets"]["en"]["metrics"], baseline("en")
    for pipeline in PIPELINES:
        for m in ("Recall@5", "nDCG@10", "MRR@10"):
            need = base[m] + 0.5 * (1 - base[m])
            assert en[pipeline][m] >= need, (pipeline, m, en[pipeline][m], "chance", round(base[m], 3))
    # Cross-lingual (German NAME lines, English pages): Dense still clearly above chance (a quarter of the gap).
    cross, base = details["datasets"]["de-en"]["metrics"]["Dense"], baseline("de-en")
    for m in ("nDCG@10", "MRR@10"):
        assert cross[m] >= base[m] + 0.25 * (1 - base[m]), (m, cross[m], "chance", round(base[m], 3))
    # The default reranker is the embedder itself (cosine): Dense+Rerank re-sorts Dense by the same scores.
    for name in ("en", "de-en"):
        for m in METRICS:
            metrics = details["datasets"][name]["metrics"]
            assert metrics["Dense+Rerank"][m] == pytest.approx(metrics["Dense"][m], abs=1e-6)


def test_metrics_agree_with_ir_measures_on_the_written_runs(in_process, man_slice):
    qrels = beir.load(man_slice / "en").qrels
    for pipeline in PIPELINES:
        path = in_process / "runs" / "en" / f"{pipeline}.trec"
        ours = evaluate(read_run(path), qrels)
        theirs = ir_measures.calc_aggregate(
            [ir_measures.R @ 5, ir_measures.nDCG @ 10], qrels, ir_measures.read_trec_run(str(path))
        )
        assert ours["Recall@5"] == pytest.approx(theirs[ir_measures.R @ 5], abs=1e-9)
        assert ours["nDCG@10"] == pytest.approx(theirs[ir_measures.nDCG @ 10], abs=1e-9)
        stored = json.loads((in_process / "details.json").read_text())["datasets"]["en"]["metrics"][pipeline]
        assert stored == pytest.approx(ours, abs=1e-12)


def test_second_run_reads_embeddings_from_the_cache(in_process, man_slice, tmp_path):
    assert (
        rankserve(
            "eval",
            "--dataset",
            man_slice / "en",
            "--output",
            tmp_path,
            "--cache-dir",
            in_process / "cache",
            "--no-progress",
        )
        == 0
    )
    details = json.loads((tmp_path / "details.json").read_text())
    assert details["datasets"]["en"]["cached"] == {"embed corpus": True, "embed queries": True}
    assert results(tmp_path) == json.loads((in_process / "details.json").read_text())["datasets"]["en"]["metrics"]


def test_over_http_matches_in_process(in_process, man_slice, live_default, tmp_path):
    """Same default model behind /v1/embeddings and /v1/ranking: the same table."""
    assert (
        rankserve(
            "eval",
            "--dataset",
            man_slice,
            "--output",
            tmp_path,
            "--embed-url",
            live_default.url,
            "--rerank-url",
            live_default.url + "/v1",
            "--no-cache",
            "--no-progress",
        )
        == 0
    )
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
    topics = [
        "list directory contents",
        "copy files and directories",
        "print the system date and time",
        "show disk space usage",
        "search text for a pattern",
        "compress an archive",
        "count lines in files",
        "remove files or directories",
    ]
    corpus = []
    for i, t in enumerate(topics):
        corpus.append({"_id": f"p{i}#0", "text": f"This command can {t}.", "metadata": {"page": f"p{i}"}})
        corpus.append({"_id": f"p{i}#1", "text": f"Options and examples for page {i}.", "metadata": {"page": f"p{i}"}})
    queries = [{"_id": f"q{i}", "text": topics[i]} for i in range(0, 8, 2)]
    beir.write(path, corpus, queries, {f"q{i}": {f"p{i}": 1} for i in range(0, 8, 2)})


def test_cross_encoder_reranker_and_passages(bert_ce_dir, tmp_path):
    data, out = tmp_path / "toy", tmp_path / "out"
    write_toy(data)
    assert (
        rankserve(
            "eval",
            "--dataset",
            data,
            "--output",
            out,
            "--reranker",
            bert_ce_dir,
            "--top-k",
            "20",
            "--no-cache",
            "--no-progress",
        )
        == 0
    )
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
    both = asyncio.run(
        score(
            "list directory contents",
            [
                c["text"]
                for c in map(json.loads, (data / "corpus.jsonl").read_text().splitlines())
                if c["metadata"]["page"] == page
            ],
        )
    )
    assert q0[page] == pytest.approx(max(both), abs=1e-5)


def test_bad_dataset_is_one_line_error(tmp_path, capsys):
    assert rankserve("eval", "--dataset", tmp_path / "missing", "--output", tmp_path / "out", "--no-progress") == 2
    assert "no corpus.jsonl" in capsys.readouterr().err


def test_unreachable_server_is_one_line_error(tmp_path, capsys):
    from conftest import free_port

    write_toy(tmp_path / "toy")
    url = f"http://127.0.0.1:{free_port()}"
    assert (
        rankserve(
            "eval", "--dataset", tmp_path / "toy", "--output", tmp_path / "out", "--embed-url", url, "--no-progress"
        )
        == 2
    )
    assert f"{url}/v1/models: ConnectError" in capsys.readouterr().err
