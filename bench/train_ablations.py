"""`rankserve train` ablations on the man-page split: one change at a time from a 1-epoch base,
each evaluated on the held-out test pages; a markdown table and a chart of what each change buys.

Variants (all: learning rate 1e-4, batch 16, BCE, seed 0): base = 4 negatives mined from BM25 and the
dense embedder interleaved, taken as retrieved (any passage of a page), pairs cut to 128 tokens, 1
epoch; then negatives that are each retrieved page's first passage (the positive's position), 8
negatives, BM25-only and dense-only negatives, 256 tokens, 2 epochs. The bi-encoder-only rows come from the same held-out
evaluation (its first stages do not depend on the reranker).

    rankserve data manpages --langs en --cross "" --granularity passages --max-pages 600 \\
        --test-fraction 0.25 --out /tmp/mp-train
    python bench/train_ablations.py --data /tmp/mp-train/passages --out /tmp/abl [--chart docs/evaluation-finetune.png]

Runs whose output folder already holds a training.json are read, not retrained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BASE = [
    "--loss",
    "bce",
    "--negatives",
    "4",
    "--mine",
    "both",
    "--negative-passages",
    "any",
    "--max-length",
    "128",
    "--epochs",
    "1",
]  # bce: the loss these ablations were measured with (listwise is now the default)
VARIANTS = {
    "base": ("base: 4 negatives (BM25 + dense, passages as retrieved), 128 tokens, 1 epoch", {}),
    "first": ("negatives = first passages of the retrieved pages", {"--negative-passages": "first"}),
    "neg8": ("8 negatives", {"--negatives": "8"}),
    "bm25": ("negatives from BM25 only", {"--mine": "bm25"}),
    "dense": ("negatives from the dense embedder only", {"--mine": "dense"}),
    "len256": ("256 tokens", {"--max-length": "256"}),
    "ep2": ("2 epochs", {"--epochs": "2"}),
}
PIPES = ("Dense", "Dense+Rerank", "Dense+Sparse", "Dense+Sparse+Rerank")


def args_for(change: dict[str, str]) -> list[str]:
    out = list(BASE)
    for flag, value in change.items():
        out[out.index(flag) + 1] = value
    return out


def run(name: str, change: dict[str, str], data: Path, out: Path) -> dict:
    record = out / name / "training.json"
    if not record.is_file():
        cmd = [
            sys.executable,
            "-m",
            "rankserve.cli",
            "train",
            "--dataset",
            str(data / "en-train"),
            "--output",
            str(out / name),
            "--learning-rate",
            "1e-4",
            "--batch-size",
            "16",
            "--eval-dataset",
            str(data / "en-test"),
            "--eval-top-k",
            "20",
            "--no-progress",
            *args_for(change),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(record.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="the manpages passages folder holding en-train, en-test")
    ap.add_argument("--out", type=Path, required=True, help="one model folder per variant")
    ap.add_argument("--chart", type=Path, default=None, help="write a PNG chart here")
    args = ap.parse_args()
    rows = {name: (label, run(name, change, args.data, args.out)) for name, (label, change) in VARIANTS.items()}
    first = next(iter(rows.values()))[1]["heldout"]["metrics"]
    print(
        f"bi-encoder only (held-out, {next(iter(rows.values()))[1]['heldout']['queries']} queries): "
        + ", ".join(f"{p} nDCG@10 {100 * first[p]['nDCG@10']:.1f}" for p in ("Dense", "Dense+Sparse"))
    )
    print(
        "| variant | pairs per epoch | train s | loss (last 5 logs) | Dense+Rerank R@5 | nDCG@10 | Dense+Sparse+Rerank R@5 | nDCG@10 | MRR@10 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, rec in rows.values():
        m, t = rec["heldout"]["metrics"], rec["training"]
        tail = t["loss_history"][-5:]  # the last logged losses, averaged (single steps are noisy)
        print(
            f"| {label} | {t['pairs_per_epoch']} | {t['seconds']:.0f} | {sum(tail) / len(tail):.3f} | "
            f"{100 * m['Dense+Rerank']['Recall@5']:.1f} | {100 * m['Dense+Rerank']['nDCG@10']:.1f} | "
            f"{100 * m['Dense+Sparse+Rerank']['Recall@5']:.1f} | {100 * m['Dense+Sparse+Rerank']['nDCG@10']:.1f} | "
            f"{100 * m['Dense+Sparse+Rerank']['MRR@10']:.1f} |"
        )
    if args.chart:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(rows)
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.38
        for k, pipe in enumerate(("Dense+Rerank", "Dense+Sparse+Rerank")):
            values = [100 * rows[n][1]["heldout"]["metrics"][pipe]["nDCG@10"] for n in names]
            ax.bar([i + (k - 0.5) * width for i in range(len(names))], values, width, label=f"{pipe} (trained CE)")
        for pipe, style in (("Dense", ":"), ("Dense+Sparse", "--")):
            ax.axhline(100 * first[pipe]["nDCG@10"], linestyle=style, color="black", label=f"{pipe} (bi-encoder only)")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("nDCG@10, held-out man pages")
        ax.set_ylim(0, 100)
        ax.set_title("rankserve train ablations: what each change buys (one change from base)")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.chart, dpi=110)
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    main()
