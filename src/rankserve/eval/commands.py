"""``rankserve eval`` and ``rankserve data manpages``: registered on the main parser by ``add_commands``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from rankserve.config import cache_dir


def default_cache_dir() -> Path:
    return cache_dir("eval")


class _Help(argparse.HelpFormatter):
    """Show a flag's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def add_commands(subparsers) -> None:
    """Add ``eval`` and ``data`` to the ``rankserve`` subcommand parsers."""
    ev = subparsers.add_parser(
        "eval",
        help="hybrid-retrieval table (Sparse, Dense, +Rerank, +Sparse) on BEIR-format data",
        description="Run BM25, dense, fusion and rerank pipelines on a BEIR directory (or a directory of them) "
        "and write OUT/results.json, results.md, results.png, details.json and TREC run files.",
        formatter_class=_Help,
    )
    ev.add_argument(
        "--dataset",
        required=True,
        type=Path,
        help="BEIR directory (corpus.jsonl, queries.jsonl, qrels/test.tsv) or a folder of them",
    )
    ev.add_argument("--output", required=True, type=Path, help="output folder")
    ev.add_argument("--top-k", type=int, default=100, help="depth of each first stage and of the rerank")
    ev.add_argument(
        "--model",
        default=None,
        help="embedding model folder or Hub repo id (in-process); default: packaged all-MiniLM-L6-v2",
    )
    ev.add_argument(
        "--reranker",
        default=None,
        help="reranker folder or Hub repo id (cross-encoder, in-process); default: --model (a bi-encoder re-scores by cosine)",
    )
    ev.add_argument("--embed-url", default=None, help="NIM-compatible server for /v1/embeddings instead of --model")
    ev.add_argument(
        "--rerank-truncate",
        choices=("END", "CHUNK"),
        default="END",
        help="how the rerank stage fits long documents: END cuts at the model's limit, CHUNK scores "
        "overlapping windows and keeps the best",
    )
    ev.add_argument(
        "--rerank-weight",
        default=None,
        help="fuse each +Rerank list with the first stage it re-scored (weighted RRF; a number in [0, 1], "
        "1 = the reranker alone), or 'trained': the weight `rankserve train --validation-fraction` "
        "chose for --reranker (its training.json); default: the reranker's order alone",
    )
    ev.add_argument("--rerank-url", default=None, help="NIM-compatible server for /v1/ranking instead of --reranker")
    ev.add_argument("--embed-model", default=None, help="model id sent to --embed-url; default: first of /v1/models")
    ev.add_argument("--rerank-model", default=None, help="model id sent to --rerank-url; default: first of /v1/models")
    ev.add_argument("--api-key", default=None, help="Bearer token for the URLs [env NVIDIA_API_KEY]")
    ev.add_argument(
        "--max-queries", type=int, default=None, help="evaluate a seeded sample of this many queries per dataset"
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the --max-queries sample")
    ev.add_argument("--lang", default="en", help="BM25 language of texts without metadata.lang")
    ev.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="texts per embedding request (lower it for servers with a smaller batch limit)",
    )
    ev.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ev.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="embedding cache")
    ev.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    ev.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ev.set_defaults(func=cmd_eval)

    data = subparsers.add_parser("data", help="build evaluation datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    man = data_sub.add_parser(
        "manpages",
        help="BEIR datasets from the installed Linux man pages (query = NAME line, document = page)",
        formatter_class=_Help,
    )
    man.add_argument("--langs", default="en,de,fr", help="comma-separated languages (man tree folder names)")
    man.add_argument(
        "--cross", default=None, help="languages X for cross-lingual X->en variants; default: every non-English --langs"
    )
    man.add_argument(
        "--out", required=True, type=Path, help="output folder: OUT/pages/<variant>, OUT/passages/<variant>"
    )
    man.add_argument("--max-pages", type=int, default=1000, help="pages per variant (seeded sample); 0 = all")
    man.add_argument("--sections", default="1,2,3,4,5,6,7,8", help="man sections to include")
    man.add_argument(
        "--english",
        choices=("translated", "all"),
        default="translated",
        help="English pages: only those translated into another of --langs/--cross (any installed "
        "language if none), or all",
    )
    man.add_argument(
        "--granularity", default="pages,passages", help="pages (whole page per document), passages, or both"
    )
    man.add_argument("--passage-tokens", type=int, default=250, help="passage size in MiniLM WordPiece tokens")
    man.add_argument("--seed", type=int, default=0, help="seed of the page sample (and of the train/test split)")
    man.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="> 0: write <variant>-train and <variant>-test, split by page (a seeded hash of the page "
        "id: the same pages are held out in every variant); 0 = one set",
    )
    man.add_argument(
        "--man-root",
        type=Path,
        default=Path("/usr/share/man"),
        help="man tree (English in man<N>/, others in <lang>/man<N>/)",
    )
    man.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel page renderers")
    man.add_argument("--no-progress", action="store_true", help="hide progress bars")
    man.set_defaults(func=cmd_data_manpages)

    docs = data_sub.add_parser(
        "docs",
        help="BEIR datasets from Debian's other documentation: info manuals (index entry -> node), "
        "Python's library reference (first sentence -> API entry), the Debian Reference (section title "
        "-> section)",
        description='See docs/evaluation.md ("More corpora") for how each query and document is made.',
        formatter_class=_Help,
    )
    docs.add_argument("--sources", default="info,pydoc,debref", help="comma-separated: info, pydoc, debref")
    docs.add_argument("--out", required=True, type=Path, help="output folder: OUT/<source>[-train|-test]")
    docs.add_argument("--debref-langs", default="en", help="Debian Reference languages (en, de, fr, ...)")
    docs.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="> 0: write <source>-train and <source>-test, split by manual / module page / chapter",
    )
    docs.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    docs.add_argument("--info-root", type=Path, default=Path("/usr/share/info"))
    docs.add_argument("--pydoc-root", type=Path, default=Path("/usr/share/doc/python3.11/html/library"))
    docs.add_argument("--debref-root", type=Path, default=Path("/usr/share/debian-reference"))
    docs.set_defaults(func=cmd_data_docs)


def require(*modules: str) -> None:
    """Fail with the install line, not a traceback, when an evaluation dependency is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"rankserve: this command needs {', '.join(missing)} (the evaluation extra): pip install 'rankserve[eval]'"
        )


def _usage_errors(fn):
    """Missing files, bad input and unreachable servers end in one line on stderr and exit status 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
            print(f"rankserve {args.command}: {exc}", file=sys.stderr)
            return 2

    return wrapper


@_usage_errors
def cmd_eval(args: argparse.Namespace) -> int:
    require("bm25s", "matplotlib", "tqdm")
    return asyncio.run(run_eval(args))


async def run_eval(args: argparse.Namespace) -> int:
    from rankserve.eval import beir, report
    from rankserve.eval.clients import open_clients
    from rankserve.eval.pipeline import Options, run_dataset, write_run

    paths = beir.find_datasets(args.dataset)
    weight = rerank_weight(args.rerank_weight, args.reranker)
    start = time.perf_counter()
    embedder, reranker, opened = await open_clients(
        args.model,
        args.reranker,
        args.embed_url,
        args.rerank_url,
        args.embed_model,
        args.rerank_model,
        args.api_key,
        args.rerank_truncate,
    )
    load_s = time.perf_counter() - start
    opts = Options(
        top_k=args.top_k,
        cache_dir=None if args.no_cache else args.cache_dir,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        lang=args.lang,
        progress=not args.no_progress,
        rerank_weight=weight,
    )
    results = []
    try:
        for path in paths:
            ds = beir.load(path)
            ds = ds.sample(args.max_queries, args.seed)
            print(f"{ds.name}: {len(ds.doc_ids)} documents, {len(ds.query_ids)} queries", file=sys.stderr)
            result = await run_dataset(ds, embedder, reranker, opts)
            for name, run in result.runs.items():
                write_run(args.output / "runs" / ds.name / f"{name}.trec", run, name)
            results.append(result)
    finally:
        for c in opened:
            await c.close()
    settings = {
        "embedder": embedder.identity,
        "reranker": reranker.identity,
        "rerank_truncate": args.rerank_truncate,
        "top_k": args.top_k,
        "rerank_weight": weight,
        "datasets": [str(p) for p in paths],
        "max_queries": args.max_queries,
        "seed": args.seed,
        "model_load_seconds": round(load_s, 3),
        "total_seconds": round(time.perf_counter() - start, 3),
        "command": "rankserve " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("rankserve") else None,
    }
    print(report.write(args.output, results, settings))
    print(f"wrote {args.output}/results.json, results.md, results.png, details.json, runs/", file=sys.stderr)
    return 0


def rerank_weight(value: str | None, reranker: str | None) -> float | None:
    """``--rerank-weight``: None, a number in [0, 1], or "trained" (read from the reranker's training.json)."""
    if value is None:
        return None
    if value == "trained":
        from rankserve.model_source import resolve  # a Hub repo trained by rankserve carries its training.json

        record = resolve(reranker).path / "training.json" if reranker else None
        if record is None or not record.is_file():
            raise ValueError("--rerank-weight trained needs --reranker, a folder written by `rankserve train`")
        weight = json.loads(record.read_text()).get("validation", {}).get("rerank_weight")
        if weight is None:
            raise ValueError(f"{record}: no rerank weight (train with --validation-fraction to choose one)")
        return float(weight)
    try:
        weight = float(value)
    except ValueError:
        raise ValueError(f"--rerank-weight {value!r}: a number in [0, 1] or 'trained'") from None
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--rerank-weight {value}: must be in [0, 1]")
    return weight


@_usage_errors
def cmd_data_manpages(args: argparse.Namespace) -> int:
    require("tqdm")
    from rankserve.eval.manpages import BuildOptions, build

    langs = [x for x in args.langs.split(",") if x]
    cross = [x for x in args.cross.split(",") if x] if args.cross is not None else [x for x in langs if x != "en"]
    opts = BuildOptions(
        langs=langs,
        cross=cross,
        sections=[s for s in args.sections.split(",") if s],
        max_pages=args.max_pages,
        granularity=[g for g in args.granularity.split(",") if g],
        passage_tokens=args.passage_tokens,
        seed=args.seed,
        man_root=args.man_root,
        english=args.english,
        workers=args.workers,
        progress=not args.no_progress,
        test_fraction=args.test_fraction,
    )
    manifest = build(args.out, opts)
    for name, size in manifest["variants"].items():
        print(f"{name}: {size['documents']} documents, {size['pages']} pages, {size['queries']} queries")
    return 0


@_usage_errors
def cmd_data_docs(args: argparse.Namespace) -> int:
    from rankserve.eval.docsets import DocsOptions, build

    opts = DocsOptions(
        sources=[x for x in args.sources.split(",") if x],
        test_fraction=args.test_fraction,
        seed=args.seed,
        debref_langs=[x for x in args.debref_langs.split(",") if x],
        info_root=args.info_root,
        pydoc_root=args.pydoc_root,
        debref_root=args.debref_root,
    )
    manifest = build(args.out, opts)
    for name, size in manifest["variants"].items():
        print(f"{name}: {size['documents']} documents, {size['units']} units, {size['queries']} queries")
    return 0
