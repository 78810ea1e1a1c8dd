"""Ray Serve replicas vs one plain `rankserve serve` process: pairs/s per replica and what Ray costs.

The same seeded requests (``rankserve bench``'s generator) go, in one run, to: (1) a plain
``rankserve serve`` process with all the cores, and (2) ``rankserve serve --ray --replicas N`` with
the cores split between the replicas (``--ray-cpus``). On one machine the replicas share its cores,
so the ratio says what Ray's proxy and the split cost, not how a cluster scales (that is linear in
replicas as long as each has its own cores; docs/scaling.md).

    python bench/ray_replicas.py [--replicas 1,2] [--requests 32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, minilm_cross_encoder, rankserve_cmd, start_server, stop_server  # noqa: E402

from rankserve.loadgen import make_requests, run_level  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    model = minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce")
    bodies = make_requests(args.requests, (20, 60), (16, 256), seed=0)
    setups = {"plain": ["--model", str(model)]}
    for n in (int(x) for x in args.replicas.split(",")):
        setups[f"ray x{n}"] = [
            "--model",
            str(model),
            "--ray",
            "--replicas",
            str(n),
            "--ray-cpus",
            f"{cores / n:g}",
            "--threads",
            str(max(1, cores // n)),
        ]
    print(f"cores {cores}; {len(bodies)} requests of 20-60 MiniLM cross-encoder pairs, concurrency {args.concurrency}")
    rates = {}
    for name, flags in setups.items():
        port = free_port()
        proc = start_server(rankserve_cmd(port, "--dtype", "float32", *flags), port, {"RAY_USAGE_STATS_ENABLED": "0"})
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(run_level(url, bodies[:4], 2, None, 300))  # warm the path
            r = asyncio.run(run_level(url, bodies, args.concurrency, None, 300))
        finally:
            stop_server(proc)
        rates[name] = r.pairs_per_s
        print(
            f"| {name} | {r.pairs_per_s:.1f} pairs/s | errors {r.errors} | p50 {r.p50_ms:.0f} ms | p99 {r.p99_ms:.0f} ms |"
            f" {r.pairs_per_s / rates['plain']:.2f}x plain |"
        )


if __name__ == "__main__":
    main()
