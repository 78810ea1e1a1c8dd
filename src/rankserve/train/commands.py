"""``rankserve train``: mine hard negatives, fine-tune a cross-encoder, evaluate it on held-out data.

    rankserve data manpages --langs en --cross "" --granularity passages --test-fraction 0.2 --out /tmp/mp
    rankserve train --dataset /tmp/mp/passages/en-train --output /models/man-ce --eval-dataset /tmp/mp/passages/en-test

Writes the model folder (servable as is) and ``training.json`` in it: data, base, hyper-parameters,
mining, time, loss history, and the held-out table when ``--eval-dataset`` is given.

``--validation-fraction F`` holds out a seeded fraction of the training *pages* (none of their
passages is trained on or mined as a negative), evaluates the trained model on them, and chooses
there the rerank weight w with which each +Rerank list is fused with its first stage (weighted RRF;
w = 1 is the reranker alone). The held-out table then shows both the reranker alone and fused at
that w, which ``rankserve eval --rerank-weight trained`` applies: the test split never chooses it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

from rankserve.eval.commands import _Help, _usage_errors, default_cache_dir, require
from rankserve.train import LOSSES, METHODS, POSITIONS


def add_command(subparsers) -> None:
    tr = subparsers.add_parser(
        "train",
        help="fine-tune a cross-encoder reranker on a BEIR training set (hard negatives mined here)",
        description=__doc__,
        formatter_class=_Help,
    )
    tr.add_argument("--dataset", required=True, type=Path, help="BEIR training set (e.g. a manpages -train split)")
    tr.add_argument("--output", required=True, type=Path, help="model folder to write (safetensors cross-encoder)")
    tr.add_argument(
        "--base",
        default=None,
        help="BERT-family checkpoint to start from (a folder or a Hub repo id); default: the packaged "
        "all-MiniLM-L6-v2 with a new head",
    )
    tr.add_argument("--epochs", type=float, default=1.0)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--learning-rate", type=float, default=5e-5)
    tr.add_argument("--max-length", type=int, default=256, help="tokens per (query, passage) pair")
    tr.add_argument("--negatives", type=int, default=4, help="hard negatives per query")
    tr.add_argument("--mine", choices=METHODS, default="both", help="first stage(s) the negatives come from")
    tr.add_argument(
        "--negative-passages",
        choices=POSITIONS,
        default="any",
        help="passage datasets: the passages as retrieved (any), or each retrieved page's first passage, "
        "the positive's position (first; ranked worse on the man pages: docs/evaluation.md)",
    )
    tr.add_argument(
        "--loss",
        choices=LOSSES,
        default="listwise",
        help="listwise (softmax over the positive, its negatives and the batch's other passages) or bce "
        "(pointwise); on the man pages listwise ranked far better (docs/evaluation.md)",
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--max-queries", type=int, default=0, help="train on a seeded sample of this many queries; 0 = all")
    tr.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (quick runs)")
    tr.add_argument("--save-steps", type=int, default=500, help="checkpoint every this many steps (for --resume)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT/checkpoints")
    tr.add_argument(
        "--eval-dataset", type=Path, default=None, help="held-out BEIR set: the full table with the new reranker"
    )
    tr.add_argument("--eval-top-k", type=int, default=20, help="rerank depth of the held-out evaluation")
    tr.add_argument(
        "--validation-fraction",
        type=float,
        default=0.0,
        help="> 0: hold out this fraction of the training pages (seeded) and choose the rerank fusion "
        "weight on them (0 = train on all, no weight chosen)",
    )
    tr.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="embedding and negatives cache")
    tr.add_argument("--no-progress", action="store_true", help="hide progress bars")
    tr.set_defaults(func=cmd_train)


@_usage_errors
def cmd_train(args: argparse.Namespace) -> int:
    require("bm25s", "datasets", "sentence_transformers")
    return asyncio.run(run_train(args))


async def run_train(args: argparse.Namespace) -> int:
    from rankserve.eval import beir
    from rankserve.eval.clients import LocalEngine
    from rankserve.model_source import resolve
    from rankserve.train.fit import FitOptions, fit
    from rankserve.train.mining import examples, mine

    progress = not args.no_progress
    if not 0.0 <= args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction {args.validation_fraction}: must be in [0, 1)")
    ds = beir.load(args.dataset)
    validation = None
    if args.validation_fraction > 0:
        ds, validation, dropped = ds.split_pages(args.validation_fraction, f"validation:{args.seed}")
        if not validation.query_ids or not ds.query_ids:
            raise ValueError(
                f"--validation-fraction {args.validation_fraction} leaves {len(ds.query_ids)} training and "
                f"{len(validation.query_ids)} validation queries: both need some"
            )
        print(
            f"validation: {len(validation.query_ids)} queries on held-out training pages "
            f"({len(ds.query_ids)} left to train on, {dropped} dropped: relevant pages on both sides)",
            file=sys.stderr,
        )
    if args.max_queries and len(ds.query_ids) > args.max_queries:
        ds = ds.subset(random.Random(args.seed).sample(sorted(ds.query_ids), args.max_queries))
    started = time.perf_counter()
    embedder = await LocalEngine.open(None) if args.mine != "bm25" else None
    try:
        negatives = await mine(
            ds, args.mine, args.negatives, embedder, args.cache_dir, progress=progress, position=args.negative_passages
        )
    finally:
        if embedder is not None:
            await embedder.close()
    mining_s = time.perf_counter() - started
    train_set = examples(ds, negatives)
    print(
        f"{ds.name}: {len(train_set)} training queries, {args.negatives} {args.mine} negatives each "
        f"(mined in {mining_s:.1f} s)",
        file=sys.stderr,
    )
    opts = FitOptions(
        output=args.output,
        base=resolve(args.base).path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        loss=args.loss,
        negatives=args.negatives,
        seed=args.seed,
        save_steps=args.save_steps,
        max_steps=args.max_steps,
        resume=args.resume,
        progress=progress,
    )
    stats = await asyncio.to_thread(fit, train_set, opts)
    record = {
        "dataset": str(args.dataset),
        "queries": len(ds.query_ids),
        "training": stats,
        "mining": {
            "method": args.mine,
            "negatives": args.negatives,
            "passages": args.negative_passages,
            "seconds": round(mining_s, 1),
        },
        "options": opts.recorded(),
        "command": "rankserve " + " ".join(sys.argv[1:]),
    }
    if validation is not None or args.eval_dataset is not None:
        from rankserve.eval.clients import open_clients

        embedder, reranker, opened = await open_clients(None, str(args.output), None, None, None, None, None)
        try:
            weight = None
            if validation is not None:
                record["validation"] = await evaluate(
                    args,
                    embedder,
                    reranker,
                    validation,
                    f"{args.dataset} (validation pages)",
                    progress,
                    choose_weight=True,
                )
                weight = record["validation"]["rerank_weight"]
            if args.eval_dataset is not None:
                record["heldout"] = await evaluate(
                    args,
                    embedder,
                    reranker,
                    beir.load(args.eval_dataset),
                    str(args.eval_dataset),
                    progress,
                    weight=weight,
                )
        finally:
            for client in opened:
                await client.close()
    (args.output / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output} ({stats['steps']} steps in {stats['seconds']} s); training.json", file=sys.stderr)
    return 0


async def evaluate(
    args: argparse.Namespace,
    embedder,
    reranker,
    ds,
    label: str,
    progress: bool,
    *,
    choose_weight: bool = False,
    weight: float | None = None,
) -> dict:
    """The table on ``ds``: the default embedder's first stages, reranked by the trained model, and
    each +Rerank pipeline's lift. ``choose_weight`` (validation pages only): also every fusion
    weight's score and the best one. ``weight`` (held-out data, chosen on validation): also the
    table and lift fused at that weight."""
    from rankserve.eval import metrics
    from rankserve.eval.pipeline import Options, choose_rerank_weight, fuse_rerank, rerank_lift, run_dataset

    result = await run_dataset(
        ds, embedder, reranker, Options(top_k=args.eval_top_k, cache_dir=args.cache_dir, progress=progress)
    )
    out = {
        "dataset": label,
        "top_k": args.eval_top_k,
        "metrics": result.metrics,
        "lift": result.lift,
        "rerank_seconds": result.timings.get("rerank"),
        "queries": result.sizes.get("queries"),
    }
    if choose_weight:
        out["rerank_weight"], by_weight = choose_rerank_weight(result.runs, ds.qrels)
        out["nDCG@10_by_weight"] = {str(w): round(v, 4) for w, v in by_weight.items()}
    if weight is not None:
        per_query = {p: metrics.per_query(run, ds.qrels) for p, run in fuse_rerank(result.runs, weight).items()}
        out["rerank_weight"] = weight
        out["fused_metrics"] = {p: metrics.mean(values) for p, values in per_query.items()}
        out["fused_lift"] = rerank_lift(per_query)
    return out
