"""Server benchmark: rankserve vs a naive FastAPI + CrossEncoder.predict server, one run.

Both in float32 (rankserve with ``--dtype float32``: ``auto`` may pick mixed bf16 on a CPU with
native bf16, which bench/int8.py measures against fp32 on its own).

Both serve the same MiniLM-L6-size cross-encoder on 127.0.0.1 (one at a time, so they never
share the CPU). The same seeded requests (20-100 passages, 16-256 words) are sent by
`rankserve bench`'s load generator at each concurrency level. The offline reference is
CrossEncoder.predict given all the pairs of those requests at once, and rankserve's own Engine
given all those requests at once in a child process (no HTTP: serving costs = 1 - server / this),
both measured in the same run.

    python bench/server.py [--concurrency 4,8,16] [--requests 48]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import engine_offline, minilm_cross_encoder, start_server, stop_server  # noqa: E402

from rankserve import loadgen  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="4,8,16")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--passages", default="20-100")
    ap.add_argument("--tokens", default="16-256")
    ap.add_argument("--out", default=None, help="write server.json and server.png (pairs/s per level) here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    passages, tokens = loadgen._range(args.passages), loadgen._range(args.tokens)
    model_dir = minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce")

    from sentence_transformers import CrossEncoder

    bodies = loadgen.make_requests(args.requests, passages, tokens, 0)
    pairs = [(b["query"]["text"], p["text"]) for b in bodies for p in b["passages"]]
    ce = CrossEncoder(str(model_dir), device="cpu")
    ce.predict(pairs[:64], batch_size=32, show_progress_bar=False)
    t = time.perf_counter()
    ce.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    offline = len(pairs) / (time.perf_counter() - t)
    del ce
    print(f"offline CrossEncoder.predict, all {len(pairs)} pairs at once: {offline:.1f} pairs/s")
    engine_offline = offline_engine(model_dir, bodies)
    print(f"offline rankserve Engine, all {len(bodies)} requests at once: {engine_offline:.1f} pairs/s")

    results = {}
    servers = {
        "rankserve": (
            [
                sys.executable,
                "-m",
                "rankserve.cli",
                "serve",
                "--model",
                str(model_dir),
                "--port",
                "8101",
                "--host",
                "127.0.0.1",
                "--log-level",
                "warning",
                "--dtype",
                "float32",
            ],
            8101,
            {},
        ),
        "naive": (
            [
                sys.executable,
                "-m",
                "uvicorn",
                "naive_server:app",
                "--app-dir",
                str(Path(__file__).parent),
                "--port",
                "8102",
                "--log-level",
                "warning",
            ],
            8102,
            {"MODEL_DIR": str(model_dir)},
        ),
    }
    for name, (cmd, port, env) in servers.items():
        proc = start_server(cmd, port, env, timeout=180)
        try:
            results[name] = loadgen.run(f"http://127.0.0.1:{port}", levels, args.requests, passages, tokens)
        finally:
            stop_server(proc)
        print(f"\n{name}\n{loadgen.table(results[name])}")

    print(
        "\n| clients | rankserve pairs/s | naive pairs/s | rankserve/naive | rankserve/offline predict "
        "| rankserve/offline Engine | rankserve p99/p50 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for ours, naive in zip(results["rankserve"], results["naive"]):
        print(
            f"| {ours.concurrency} | {ours.pairs_per_s:.1f} | {naive.pairs_per_s:.1f} | "
            f"{ours.pairs_per_s / naive.pairs_per_s:.2f}x | {ours.pairs_per_s / offline:.2f}x | "
            f"{ours.pairs_per_s / engine_offline:.2f}x | {ours.p99_ms / ours.p50_ms:.2f} |"
        )
    if args.out:
        write_out(Path(args.out), results, offline, engine_offline)


def offline_engine(model_dir: Path, bodies: list[dict]) -> float:
    """pairs/s of rankserve's Engine (the server's defaults, fp32) given every request at once."""
    work = [(b["query"]["text"], [p["text"] for p in b["passages"]]) for b in bodies]
    seconds, scores = engine_offline(model_dir, work, {"dtype": "float32"})
    return len(scores) / seconds


def write_out(out: Path, results: dict, offline: float, engine_offline: float) -> None:
    """JSON of every level plus a bar chart of pairs/s per concurrency level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "server.json").write_text(
        json.dumps(
            {
                "offline_pairs_per_s": offline,
                "offline_engine_pairs_per_s": engine_offline,
                **{k: json.loads(loadgen.to_json(v)) for k, v in results.items()},
            },
            indent=2,
        )
    )
    levels = [r.concurrency for r in results["rankserve"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for i, name in enumerate(("rankserve", "naive")):
        ax.bar(
            [x + (i - 0.5) * width for x in range(len(levels))],
            [r.pairs_per_s for r in results[name]],
            width,
            label=name,
        )
    ax.axhline(offline, color="gray", linestyle="--", label="offline CrossEncoder.predict")
    ax.axhline(engine_offline, color="black", linestyle=":", label="offline rankserve Engine")
    ax.set_xticks(range(len(levels)), [f"{c} clients" for c in levels])
    ax.set_ylabel("pairs/s")
    ax.set_title("Server throughput, MiniLM-L6 cross-encoder, 2 CPU cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "server.png", dpi=110)


if __name__ == "__main__":
    main()
