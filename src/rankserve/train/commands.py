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
``--validation-dataset DIR`` chooses w on another corpus instead (one not trained on), so that w
reflects how far the reranker can be trusted off its training corpus, not on it.

Several ``--dataset`` sets are mixed: each is mined on its own (negatives come from its own
corpus) and the trainer shuffles their examples together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from rankserve.eval.commands import _Help, _usage_errors, default_cache_dir, require
from rankserve.train import LOSSES, METHODS, POSITIONS, TEACHERS


def add_command(subparsers) -> None:
    tr = subparsers.add_parser(
        "train",
        help="fine-tune a cross-encoder reranker on a BEIR training set (hard negatives mined here)",
        description=__doc__,
        formatter_class=_Help,
    )
    tr.add_argument(
        "--dataset",
        required=True,
        type=Path,
        nargs="+",
        help="BEIR training set(s) (e.g. a manpages -train split); several are mixed (mined one by one, "
        "trained on together)",
    )
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
        help="listwise (softmax over the positive, its negatives and the batch's other passages), bce "
        "(pointwise; on the man pages listwise ranked far better), or distill (listwise toward the label mixed "
        "with the dense embedder's own scores: docs/evaluation.md)",
    )
    tr.add_argument(
        "--teacher-weight",
        type=float,
        default=0.5,
        help="distill: the embedder's share of each query's target distribution (0 = the label alone)",
    )
    tr.add_argument(
        "--teacher",
        choices=TEACHERS,
        default="dense",
        help="distill: whose scores the target mixes in: the dense embedder's, or both first stages' "
        "(the mean of the embedder's and BM25's distributions)",
    )
    tr.add_argument(
        "--teacher-scale",
        type=float,
        default=20.0,
        help="distill: the embedder's cosine times this is its logit (20: the scale it was trained at)",
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--max-queries",
        type=int,
        default=0,
        help="train on a seeded sample of this many queries of each training set; 0 = all",
    )
    tr.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (quick runs)")
    tr.add_argument("--save-steps", type=int, default=500, help="checkpoint every this many steps (for --resume)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT/checkpoints")
    tr.add_argument(
        "--eval-dataset",
        type=Path,
        nargs="+",
        default=None,
        help="held-out BEIR set(s): the full table with the new reranker, one per set",
    )
    tr.add_argument("--eval-top-k", type=int, default=20, help="rerank depth of the held-out evaluation")
    tr.add_argument(
        "--validation-fraction",
        type=float,
        default=0.0,
        help="> 0: hold out this fraction of the training pages (seeded) and choose the rerank fusion "
        "weight on them (0 = train on all, no weight chosen)",
    )
    tr.add_argument(
        "--validation-dataset",
        type=Path,
        default=None,
        help="choose the rerank fusion weight on this BEIR set instead: a corpus not trained on, so the "
        "weight is not fitted to the training corpus's style (docs/evaluation.md)",
    )
    tr.add_argument(
        "--validation-queries",
        type=int,
        default=0,
        help="choose the weight on a seeded sample of this many validation queries; 0 = all",
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
    from rankserve.train.mining import examples, mine, teacher_scores

    progress = not args.no_progress
    if not 0.0 <= args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction {args.validation_fraction}: must be in [0, 1)")
    if args.validation_fraction > 0 and args.validation_dataset is not None:
        raise ValueError("give --validation-fraction or --validation-dataset, not both")
    if args.validation_dataset is not None and args.validation_dataset.resolve() in {p.resolve() for p in args.dataset}:
        raise ValueError(f"--validation-dataset {args.validation_dataset} is also a training set: give another corpus")
    if not 0.0 <= args.teacher_weight <= 1.0:
        raise ValueError(f"--teacher-weight {args.teacher_weight}: must be in [0, 1]")
    if args.validation_fraction > 0 and len(args.dataset) > 1:
        raise ValueError("--validation-fraction splits one training set: with several, give --validation-dataset")
    train_sets, validation = [], None
    for path in args.dataset:
        ds = beir.load(path)
        if args.validation_fraction > 0:
            ds, held, dropped = ds.split_pages(args.validation_fraction, f"validation:{args.seed}")
            if not held.query_ids or not ds.query_ids:
                raise ValueError(
                    f"--validation-fraction {args.validation_fraction} leaves {len(ds.query_ids)} training and "
                    f"{len(held.query_ids)} validation queries of {path}: both need some"
                )
            print(
                f"validation: {len(held.query_ids)} queries on held-out pages of {path} "
                f"({len(ds.query_ids)} left to train on, {dropped} dropped: relevant pages on both sides)",
                file=sys.stderr,
            )
            validation = held
        train_sets.append(ds.sample(args.max_queries, args.seed))
    if args.validation_dataset is not None:
        validation = beir.load(args.validation_dataset)
    if validation is not None:
        validation = validation.sample(max(args.validation_queries, 0), args.seed)
    started = time.perf_counter()
    distill = args.loss == "distill"
    embedder = await LocalEngine.open(None) if args.mine != "bm25" or distill else None
    train_set = []
    try:
        for ds in train_sets:
            negatives = await mine(
                ds,
                args.mine,
                args.negatives,
                embedder,
                args.cache_dir,
                progress=progress,
                position=args.negative_passages,
            )
            teacher = (
                await teacher_scores(
                    ds, negatives, embedder, args.cache_dir, progress, stages=args.teacher, scale=args.teacher_scale
                )
                if distill
                else None
            )
            part = examples(ds, negatives, teacher)
            print(
                f"{ds.name}: {len(part)} training queries, {args.negatives} {args.mine} negatives each", file=sys.stderr
            )
            train_set += part
    finally:
        if embedder is not None:
            await embedder.close()
    mining_s = time.perf_counter() - started
    print(f"{len(train_set)} training queries in all (mined in {mining_s:.1f} s)", file=sys.stderr)
    opts = FitOptions(
        output=args.output,
        base=resolve(args.base).path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        loss=args.loss,
        teacher_weight=args.teacher_weight,
        teacher_scale=args.teacher_scale,
        negatives=args.negatives,
        seed=args.seed,
        save_steps=args.save_steps,
        max_steps=args.max_steps,
        resume=args.resume,
        progress=progress,
    )
    stats = await asyncio.to_thread(fit, train_set, opts)
    record = {
        "dataset": [str(p) for p in args.dataset],
        "queries": sum(len(ds.query_ids) for ds in train_sets),
        "queries_per_dataset": {str(p): len(ds.query_ids) for p, ds in zip(args.dataset, train_sets)},
        "training": stats,
        "mining": {
            "method": args.mine,
            "negatives": args.negatives,
            "passages": args.negative_passages,
            "teacher": args.teacher if distill else None,
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
                    str(args.validation_dataset)
                    if args.validation_dataset is not None
                    else f"{args.dataset[0]} (validation pages)",
                    progress,
                    choose_weight=True,
                )
                weight = record["validation"]["rerank_weight"]
            for n, path in enumerate(args.eval_dataset or []):
                table = await evaluate(args, embedder, reranker, beir.load(path), str(path), progress, weight=weight)
                # the first held-out set keeps the key earlier records (and rankserve eval) use
                record["heldout" if n == 0 else f"heldout_{n + 1}"] = table
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
