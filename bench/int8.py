"""Backends and lossy modes vs our own torch fp32: speed and ranking agreement, one process.

Modes (``--modes``): torch-fp32 (the reference), onnxruntime-fp32, onnxruntime-int8, torch-bf16
(mixed: linears and attention in bf16), openvino-fp32, openvino-bf16 (OpenVINO's CPU plugin on the same
ONNX export).
Each mode is a full rankserve Engine (config ``backend`` / ``quantize`` / ``dtype``) ranking the same
workload (all queries submitted concurrently, as in engine_offline.py). Rounds are interleaved; each
figure is the best of its rounds. Agreement is per query against torch fp32: top-5 overlap and
Kendall tau over the query's passages, averaged over queries.

Two models: the MiniLM-L6-size cross-encoder (real encoder, seeded random head: the speed figure),
and the trained all-MiniLM-L6-v2 bi-encoder ranking by cosine (agreement of a trained model).
``--cross-encoder DIR`` puts a trained cross-encoder (e.g. a ``rankserve train`` output) in place of
the random-head one: a trained reranker's scores spread apart, a random head's crowd together, so
agreement is only meaningful on trained weights.

    python bench/int8.py [--rounds 3] [--queries 8] [--per-query 64] [--workload mixed|uniform|manpages]
                         [--cross-encoder DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import manpage_workload, minilm_cross_encoder, workload  # noqa: E402

from rankserve.config import load_config  # noqa: E402
from rankserve.engine.backends.cpu import available_cores  # noqa: E402
from rankserve.engine.engine import Engine  # noqa: E402
from rankserve.metrics import Metrics  # noqa: E402
from rankserve.models.model_dir import default_model_dir  # noqa: E402

MODES = {
    "torch-fp32": {"backend": "torch", "dtype": "float32"},
    "onnxruntime-fp32": {"backend": "onnxruntime"},
    "onnxruntime-int8": {"backend": "onnxruntime", "quantize": "int8"},
    "torch-bf16": {"backend": "torch", "dtype": "bfloat16"},
    "openvino-fp32": {"backend": "openvino", "dtype": "float32"},
    "openvino-bf16": {"backend": "openvino", "dtype": "bfloat16"},
}


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Tau-b (ties counted as in scipy.stats.kendalltau)."""
    try:
        from scipy.stats import kendalltau

        return float(kendalltau(a, b).statistic)
    except ImportError:
        x, y = torch.tensor(a), torch.tensor(b)
        dx, dy = torch.sign(x[:, None] - x[None, :]), torch.sign(y[:, None] - y[None, :])
        return float((dx * dy).sum() / ((dx != 0).sum() * (dy != 0).sum()).sqrt())


def top_k_overlap(a: list[float], b: list[float], k: int = 5) -> float:
    top = lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:k])  # noqa: E731
    return len(top(a) & top(b)) / k


def agreement(ref: list[list[float]], got: list[list[float]]) -> tuple[float, float, float]:
    """-> (max |delta score|, mean top-5 overlap, mean Kendall tau) over queries."""
    delta = max(abs(x - y) for r, g in zip(ref, got) for x, y in zip(r, g))
    return (
        delta,
        statistics.mean(top_k_overlap(r, g) for r, g in zip(ref, got)),
        statistics.mean(kendall_tau(r, g) for r, g in zip(ref, got)),
    )


def fifth_gap(scores: list[float]) -> float:
    s = sorted(scores, reverse=True)
    return s[4] - s[5]


def measure(model_dir: Path, label: str, modes: list[str], work, rounds: int, loop) -> None:
    engines = {}
    for mode in modes:
        started = time.perf_counter()
        config = load_config({"model": str(model_dir), "cache_size": 0, **MODES[mode]}, environ={})
        engines[mode] = Engine.load(config, Metrics())
        loop.run_until_complete(engines[mode].start())  # warm-up pass included
        print(f"  {label}: {mode} ready in {time.perf_counter() - started:.1f}s (export on first use, then cached)")

    def run(engine):
        async def all_queries():
            return await asyncio.gather(*(engine.rank(q, ps, "END") for q, ps in work))

        return [r.scores for r in loop.run_until_complete(all_queries())]

    best = {m: float("inf") for m in modes}
    scores = {}
    for _ in range(rounds):  # interleaved: every mode once per round
        for mode in modes:
            t = time.perf_counter()
            scores[mode] = run(engines[mode])
            best[mode] = min(best[mode], time.perf_counter() - t)
    n = sum(len(ps) for _, ps in work)
    ref = scores["torch-fp32"]
    spread = statistics.median(statistics.pstdev(s) for s in ref)
    gap = statistics.median(fifth_gap(s) for s in ref)
    print(f"\n{label}: {n} pairs, fp32 score std per query (median) {spread:.3g}, 5th-6th gap (median) {gap:.3g}")
    print("| mode | pairs/s | vs torch fp32 | max abs d-score | top-5 overlap | Kendall tau |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in modes:
        delta, top5, tau = agreement(ref, scores[mode])
        print(
            f"| {mode} | {n / best[mode]:.1f} | {best['torch-fp32'] / best[mode]:.2f}x | {delta:.2e} | "
            f"{top5:.3f} | {tau:.3f} |"
        )
    for engine in engines.values():
        loop.run_until_complete(engine.stop())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--per-query", type=int, default=64)
    ap.add_argument(
        "--workload",
        default="mixed",
        choices=["mixed", "uniform", "manpages"],
        help="synthetic random words (mixed/uniform) or real text: man-page queries with their "
        "BM25 top candidates (manpages)",
    )
    ap.add_argument(
        "--modes",
        default="torch-fp32,onnxruntime-fp32,onnxruntime-int8",
        help=f"comma-separated, torch-fp32 first; of {', '.join(MODES)}",
    )
    ap.add_argument("--models", default="cross-encoder,bi-encoder")
    ap.add_argument(
        "--cross-encoder",
        type=Path,
        default=None,
        help="a trained cross-encoder folder instead of the random-head MiniLM-L6 one",
    )
    args = ap.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "torch-fp32" or any(m not in MODES for m in modes):
        ap.error(f"--modes: torch-fp32 first, then any of {', '.join(MODES)}")

    from importlib.metadata import version

    tools = ", ".join(
        f"{name} {version(name)}" for name in ("onnxruntime", "openvino") if any(m.startswith(name) for m in modes)
    )
    print(
        f"cores {available_cores()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{tools or 'torch only'}; workload {args.workload}, {args.queries} queries x "
        f"{args.per_query} passages, best of {args.rounds} interleaved rounds"
    )
    work = (
        manpage_workload(args.queries, args.per_query)
        if args.workload == "manpages"
        else workload(args.workload, args.queries, args.per_query)
    )
    loop = asyncio.new_event_loop()
    random_head = (
        "MiniLM-L6 cross-encoder (random head)",
        lambda: minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce"),
    )
    trained = (f"trained cross-encoder {args.cross_encoder}", lambda: args.cross_encoder)
    models = {
        "cross-encoder": trained if args.cross_encoder else random_head,
        "bi-encoder": ("all-MiniLM-L6-v2 bi-encoder (trained), cosine ranking", default_model_dir),
    }
    for name in args.models.split(","):
        label, directory = models[name]
        measure(directory(), label, modes, work, args.rounds, loop)


if __name__ == "__main__":
    main()
