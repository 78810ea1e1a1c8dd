"""Mixed load: interactive requests' latency while a bulk job runs, this checkout vs a baseline.

A RAG service serves many users' small rerank requests next to a few bulk re-scoring jobs; the
small requests' p99 is what users feel. Each server (this checkout, and a baseline source tree
such as a ``git worktree`` of an earlier commit) is started in turn on the same MiniLM-L6-size
cross-encoder, then driven twice for ``--seconds``:

- alone: ``--clients`` closed-loop interactive clients, 3-20 passages of 16-128 tokens each;
- with bulk: the same plus one closed-loop bulk client sending ``--bulk-passages``-passage
  requests (optionally with ``X-Priority: batch``).

- probe: one small request (3 passages) sent ``--probe-delay`` s into one bulk request, against
  the same small request alone: issue 31's goal is small-during-bulk <= 5 % of the bulk request's
  time and <= 3x the small one alone.

It prints interactive p50/p99 per phase, the bulk client's pairs/s (requests finished in the
window) and the server's throughput in real tokens through the model per second (its
``rankserve_tokens_total``: partial bulk progress counts), and the two goals' ratios: p99 with
bulk / p99 alone (goal <= 3) and this checkout's tokens/s with bulk / the baseline's (goal >= 0.9). The load generator shares the CPU with the server, as a
co-located RAG application would.

    git worktree add /tmp/rankserve-base <commit>
    python bench/mixed_load.py --baseline-src /tmp/rankserve-base/src [--seconds 30] [--out docs/mixed-load]
    python bench/mixed_load.py --baseline-args=--no-express-lane   # the express lane's effect alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_line, minilm_cross_encoder, rankserve_cmd, start_server, stop_server, text_of  # noqa: E402

from rankserve.loadgen import percentile  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def interactive_body(rng: random.Random) -> dict:
    return {
        "query": {"text": text_of(rng.randint(4, 12), rng)},
        "passages": [{"text": text_of(rng.randint(16, 128), rng)} for _ in range(rng.randint(3, 20))],
    }


def bulk_body(rng: random.Random, passages: int) -> dict:
    return {
        "query": {"text": text_of(8, rng)},
        "passages": [{"text": text_of(rng.randint(16, 128), rng)} for _ in range(passages)],
    }


async def drive(
    url: str, seconds: float, clients: int, bulk_passages: int, bulk_priority: str | None, seed: int
) -> dict:
    """Closed-loop clients for ``seconds``; the bulk client only when ``bulk_passages``."""
    latencies: list[float] = []
    pairs = {"interactive": 0, "bulk": 0}
    errors = 0
    deadline = time.perf_counter() + seconds

    async def interactive(http: httpx.AsyncClient, rng: random.Random) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            body = interactive_body(rng)
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/ranking", json=body)
            if r.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            pairs["interactive"] += len(body["passages"])

    async def bulk(http: httpx.AsyncClient, rng: random.Random) -> None:
        nonlocal errors
        headers = {"X-Priority": bulk_priority} if bulk_priority else {}
        while time.perf_counter() < deadline:
            body = bulk_body(rng, bulk_passages)
            r = await http.post(url + "/v1/ranking", json=body, headers=headers)
            if r.status_code != 200:
                errors += 1
                continue
            if time.perf_counter() <= deadline:  # count only work finished inside the window
                pairs["bulk"] += bulk_passages

    start_t = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 2)) as http:
        tokens_before = await model_tokens(http, url)
        tasks = [interactive(http, random.Random(seed + i)) for i in range(clients)]
        if bulk_passages:
            tasks.append(bulk(http, random.Random(seed + 1000)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start_t
        # The server's own count of real tokens through the model: it includes the part of a bulk
        # request that ran before the window closed, which request counts would miss.
        tokens = await model_tokens(http, url) - tokens_before
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "interactive_pairs_s": pairs["interactive"] / elapsed,
        "bulk_pairs_s": pairs["bulk"] / elapsed,
        "total_pairs_s": sum(pairs.values()) / elapsed,
        "model_tokens_s": tokens / elapsed,
    }


async def probe(url: str, bulk_passages: int, delay: float, rounds: int = 3) -> dict:
    """A 3-passage request alone (median of 5), then sent ``delay`` s into a bulk request."""
    rng = random.Random(7)
    small = {
        "query": {"text": text_of(8, rng)},
        "passages": [{"text": text_of(rng.randint(16, 128), rng)} for _ in range(3)],
    }
    async with httpx.AsyncClient(timeout=600) as http:

        async def timed(body: dict) -> float:
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/ranking", json=body)
            r.raise_for_status()
            return time.perf_counter() - t0

        alone = sorted([await timed(small) for _ in range(5)])[2]
        during, bulk_times = [], []
        for i in range(rounds):
            bulk = asyncio.create_task(timed(bulk_body(random.Random(100 + i), bulk_passages)))
            await asyncio.sleep(delay)
            during.append(await timed(small))
            bulk_times.append(await bulk)
    worst = max(range(rounds), key=lambda i: during[i])
    return {
        "small_alone_ms": alone * 1000,
        "small_during_ms": [d * 1000 for d in during],
        "bulk_s": bulk_times,
        "worst_vs_alone": during[worst] / alone,
        "worst_share_of_bulk": during[worst] / bulk_times[worst],
    }


async def model_tokens(http: httpx.AsyncClient, url: str) -> float:
    text = (await http.get(url + "/v1/metrics")).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()  # every model's series
        if line.startswith(("rankserve_tokens_total ", "rankserve_tokens_total{"))
    )


def measure(name: str, src: Path, model: Path, args: argparse.Namespace, port: int, flags: str = "") -> dict:
    proc = start_server(rankserve_cmd(port, "--model", str(model), *shlex.split(flags)), port, {"PYTHONPATH": str(src)})
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(drive(url, 3, args.clients, 0, None, 99))  # warm the server and the client pool
        alone = asyncio.run(drive(url, args.seconds, args.clients, 0, None, 1))
        mixed = asyncio.run(drive(url, args.seconds, args.clients, args.bulk_passages, args.bulk_priority, 1))
        single = asyncio.run(probe(url, args.bulk_passages, args.probe_delay))
    finally:
        stop_server(proc)
    return {"server": name, "alone": alone, "with_bulk": mixed, "probe": single}


def report(results: list[dict]) -> str:
    lines = [
        "| server | phase | interactive requests | p50 ms | p99 ms | bulk pairs/s | model tokens/s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for phase in ("alone", "with_bulk"):
            m = r[phase]
            lines.append(
                f"| {r['server']} | {phase} | {m['requests']} | {m['p50_ms']:.0f} | {m['p99_ms']:.0f} | "
                f"{m['bulk_pairs_s']:.0f} | {m['model_tokens_s']:.0f} | {m['errors']} |"
            )
    lines.append("")
    lines.append(
        "| server | small alone ms | small during bulk ms (each round) | bulk s | worst / alone | worst / bulk |"
    )
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        p = r["probe"]
        lines.append(
            f"| {r['server']} | {p['small_alone_ms']:.0f} | {', '.join(f'{d:.0f}' for d in p['small_during_ms'])} | "
            f"{', '.join(f'{b:.1f}' for b in p['bulk_s'])} | {p['worst_vs_alone']:.2f} (goal <= 3) | "
            f"{p['worst_share_of_bulk'] * 100:.1f} % (goal <= 5 %) |"
        )
    new = results[0]
    lines.append("")
    lines.append(
        f"{new['server']}: p99 with bulk / alone = {new['with_bulk']['p99_ms'] / new['alone']['p99_ms']:.2f} "
        "(goal <= 3)"
    )
    if len(results) > 1:
        base = results[1]
        lines.append(
            f"{base['server']}: p99 with bulk / alone = {base['with_bulk']['p99_ms'] / base['alone']['p99_ms']:.2f}"
        )
        lines.append(
            f"model tokens/s with bulk, {new['server']} / {base['server']} = "
            f"{new['with_bulk']['model_tokens_s'] / base['with_bulk']['model_tokens_s']:.2f} (goal >= 0.9)"
        )
    return "\n".join(lines)


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.35
    for i, r in enumerate(results):
        values = [r["alone"]["p99_ms"], r["with_bulk"]["p99_ms"]]
        bars = ax.bar([x + i * width for x in range(2)], values, width, label=r["server"])
        ax.bar_label(bars, fmt="%.0f")
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(2)], ["interactive alone", "with a bulk job"])
    ax.set_ylabel("interactive p99 latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-src", default=None, help="a source tree (its src/) to compare against")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--bulk-passages", type=int, default=600)
    ap.add_argument(
        "--bulk-priority",
        choices=("interactive", "batch"),
        default=None,
        help="send the bulk requests with this X-Priority (default: none, i.e. interactive)",
    )
    ap.add_argument("--probe-delay", type=float, default=1.0, help="seconds into the bulk request the probe is sent")
    ap.add_argument(
        "--baseline-args",
        default=None,
        help="flags for the baseline server; without --baseline-src the baseline is this checkout run "
        "with them (e.g. --no-express-lane)",
    )
    ap.add_argument("--out", default=None, help="folder for mixed-load.json and mixed-load.png")
    args = ap.parse_args()
    model = minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce")
    port = 8700 + os.getpid() % 200
    print(f"cpu: {cpu_line()}")
    results = [measure("this checkout", SRC, model, args, port)]
    if args.baseline_src or args.baseline_args is not None:
        name = "baseline" if args.baseline_src else f"this checkout {args.baseline_args}"
        results.append(
            measure(
                name,
                Path(args.baseline_src) if args.baseline_src else SRC,
                model,
                args,
                port + 1,
                args.baseline_args or "",
            )
        )
    print(report(results))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "mixed-load.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
        chart(results, out / "mixed-load.png")


if __name__ == "__main__":
    main()
