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
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, minilm_cross_encoder  # noqa: E402

from rankserve.loadgen import make_requests, run_level  # noqa: E402


def start(args: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "rankserve.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", "--dtype", "float32", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {args}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(args)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


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
        setups[f"ray x{n}"] = ["--model", str(model), "--ray", "--replicas", str(n), "--ray-cpus", f"{cores / n:g}",
                               "--threads", str(max(1, cores // n))]
    print(f"cores {cores}; {len(bodies)} requests of 20-60 MiniLM cross-encoder pairs, concurrency {args.concurrency}")
    rates = {}
    for name, flags in setups.items():
        port = free_port()
        proc = start(flags, port)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(run_level(url, bodies[:4], 2, None, 300))  # warm the path
            r = asyncio.run(run_level(url, bodies, args.concurrency, None, 300))
        finally:
            stop(proc)
        rates[name] = r.pairs_per_s
        print(f"| {name} | {r.pairs_per_s:.1f} pairs/s | errors {r.errors} | p50 {r.p50_ms:.0f} ms | p99 {r.p99_ms:.0f} ms |"
              f" {r.pairs_per_s / rates['plain']:.2f}x plain |")


if __name__ == "__main__":
    main()
