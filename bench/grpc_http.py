"""gRPC (KServe V2, tritonclient) vs HTTP (/v1/ranking, httpx) on one server and one workload.

One `rankserve serve --grpc-port` child process (MiniLM-L6-size random cross-encoder, fp32); the
same seeded rerank requests (``loadgen.make_requests``) sent at each concurrency level through
HTTP, then through gRPC (tritonclient's asyncio client, raw BYTES tensors), alternating rounds;
each figure is the best of its rounds. Prints pairs/s, p50 latency and gRPC/HTTP, and checks that
both front ends return the same ranking for the first request.

    python bench/grpc_http.py [--concurrency 1,8] [--requests 32] [--passages 20-60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, minilm_cross_encoder, rankserve_cmd, start_server, stop_server  # noqa: E402

from rankserve.loadgen import make_requests  # noqa: E402


async def run_http(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], list]:
    queue = list(bodies)
    latencies, first = [], []

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            t = time.perf_counter()
            r = await http.post(url + "/v1/ranking", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)
            if body is bodies[0]:
                first.append([x["index"] for x in r.json()["rankings"]])

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, first


async def run_grpc(address: str, model: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], list]:
    import tritonclient.grpc.aio as tg
    from tritonclient.grpc import InferInput

    queue = list(bodies)
    latencies, first = [], []

    def inputs(body: dict) -> list:
        texts = [p["text"].encode() for p in body["passages"]]
        query, passage = InferInput("query", [len(texts), 1], "BYTES"), InferInput("passage", [len(texts), 1], "BYTES")
        query.set_data_from_numpy(np.array([body["query"]["text"].encode()] * len(texts), dtype=object).reshape(-1, 1))
        passage.set_data_from_numpy(np.array(texts, dtype=object).reshape(-1, 1))
        return [query, passage]

    async with tg.InferenceServerClient(address) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                t = time.perf_counter()
                result = await client.infer(model, inputs(body))
                latencies.append(time.perf_counter() - t)
                if body is bodies[0]:
                    first.append(result.as_numpy("index").ravel().tolist())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--passages", default="20-60")
    ap.add_argument("--tokens", default="16-128")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    lo, hi = map(int, args.passages.split("-"))
    tlo, thi = map(int, args.tokens.split("-"))
    bodies = make_requests(args.requests, (lo, hi), (tlo, thi), seed=0)
    pairs = sum(len(b["passages"]) for b in bodies)
    model_dir = minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce")
    port, grpc_port = free_port(), free_port()
    proc = start_server(
        rankserve_cmd(
            port,
            "--model",
            str(model_dir),
            "--served-model-name",
            "bench/ce",
            "--dtype",
            "float32",
            "--grpc-port",
            str(grpc_port),
        ),
        port,
    )
    url, address = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    try:
        asyncio.run(run_http(url, bodies[:2], 1))  # warm both paths
        asyncio.run(run_grpc(address, "bench_ce", bodies[:2], 1))
        print(f"{args.requests} requests, {pairs} pairs, passages {args.passages}, tokens {args.tokens}")
        print(
            f"{'concurrency':>11} {'HTTP pairs/s':>12} {'gRPC pairs/s':>12} {'gRPC/HTTP':>9} "
            f"{'HTTP p50 ms':>11} {'gRPC p50 ms':>11}"
        )
        for c in map(int, args.concurrency.split(",")):
            best = {"http": (float("inf"), []), "grpc": (float("inf"), [])}
            orders = {}
            for _ in range(args.rounds):
                for kind in ("http", "grpc"):
                    seconds, lat, first = asyncio.run(
                        run_http(url, bodies, c) if kind == "http" else run_grpc(address, "bench_ce", bodies, c)
                    )
                    orders[kind] = first[0]
                    if seconds < best[kind][0]:
                        best[kind] = (seconds, lat)
            assert orders["http"] == orders["grpc"], "HTTP and gRPC ranked the first request differently"
            (th, lh), (tg_, lg) = best["http"], best["grpc"]
            print(
                f"{c:>11} {pairs / th:>12.1f} {pairs / tg_:>12.1f} {th / tg_:>8.2f}x "
                f"{statistics.median(lh) * 1000:>11.1f} {statistics.median(lg) * 1000:>11.1f}"
            )
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
