"""`rankserve bench`: an async HTTP load generator for any NIM-compatible /v1/ranking endpoint.

Closed loop: C clients each send a request, wait for the answer, send the next, for a fixed
number of requests per concurrency level. Passages per request and passage lengths are drawn
from a seeded generator, so two servers measured with the same arguments see the same requests.

Every level sends passages of its own (seed and level pick them): a server that caches passage
work (rankserve does for bi-encoder ranking) would otherwise answer every level after the first
from its cache and report pairs/s it never computed. Each level's cache hits are read from the
server's ``/v1/metrics`` (when it has rankserve's counter) and printed beside its figures;
``--same-passages`` repeats the first level's requests at every level, to measure the cache.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

WORDS = (
    "the of and to in is for that with as on by this be are from or an it at which can not file "
    "directory command option list output input process system user memory kernel time data value "
    "string number return error function call signal socket network address page print format line"
).split()


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    pairs: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cache_hits: int | None = None  # passage cache hits the server counted during the level (None: not exposed)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


def make_requests(n: int, passages: tuple[int, int], tokens: tuple[int, int], seed: int) -> list[dict]:
    """Request bodies: passages per request uniform in ``passages``, lengths log-uniform in ``tokens``."""
    rng = random.Random(seed)
    lo, hi = tokens
    bodies = []
    for _ in range(n):
        query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12)))
        count = rng.randint(*passages)
        texts = [" ".join(rng.choice(WORDS) for _ in range(int(lo * (hi / lo) ** rng.random()))) for _ in range(count)]
        bodies.append({"query": {"text": query}, "passages": [{"text": t} for t in texts]})
    return bodies


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_level(url: str, bodies: list[dict], concurrency: int, model: str | None, timeout: float) -> LevelResult:
    import httpx  # here, not at module level: `rankserve serve` imports this module for its CLI (-0.09 s start)

    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait({**body, **({"model": model} if model else {})})
    latencies: list[float] = []
    errors = 0
    pairs = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors, pairs
        while not queue.empty():
            body = queue.get_nowait()
            start = time.perf_counter()
            try:
                r = await http.post(url.rstrip("/") + "/v1/ranking", json=body)
                ok = r.status_code == 200 and len(r.json()["rankings"]) == len(body["passages"])
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
                pairs += len(body["passages"])
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    ms = [x * 1000 for x in latencies] or [float("nan")]
    return LevelResult(
        concurrency,
        len(latencies),
        errors,
        pairs,
        seconds,
        statistics.median(ms),
        percentile(ms, 0.95),
        percentile(ms, 0.99),
    )


def cache_hits(url: str) -> int | None:
    """The server's ``rankserve_passage_cache_hits_total`` (all models), or None where it has none."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        r = httpx.get(url.rstrip("/") + "/v1/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    found = [
        s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
        if s.name == "rankserve_passage_cache_hits_total"
    ]
    return int(sum(found)) if found else None


def level_seed(seed: int, level: int) -> int:
    """Level ``level``'s requests: distinct from every other level's and from the warm-up's."""
    return seed * 1000 + 2 + level


def run(
    url: str,
    concurrency: Sequence[int],
    requests: int,
    passages: tuple[int, int],
    tokens: tuple[int, int],
    seed: int = 0,
    model: str | None = None,
    timeout: float = 600,
    warmup: int = 2,
    same_passages: bool = False,
) -> list[LevelResult]:
    """Measure each concurrency level (after ``warmup`` unmeasured requests), each with requests of
    its own unless ``same_passages`` (see the module docstring), counting the server's cache hits."""
    if warmup:
        asyncio.run(run_level(url, make_requests(warmup, passages, tokens, seed * 1000 + 1), 1, model, timeout))
    results = []
    for i, c in enumerate(concurrency):
        bodies = make_requests(requests, passages, tokens, level_seed(seed, 0 if same_passages else i))
        before = cache_hits(url)
        result = asyncio.run(run_level(url, bodies, c, model, timeout))
        after = cache_hits(url)
        hits = None if before is None or after is None else after - before
        results.append(replace(result, cache_hits=hits))
    return results


def table(results: Sequence[LevelResult]) -> str:
    rows = [
        "| clients | requests | errors | req/s | pairs/s | p50 ms | p95 ms | p99 ms | p99/p50 | cache hits |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        hits = "n/a" if r.cache_hits is None else str(r.cache_hits)
        rows.append(
            f"| {r.concurrency} | {r.requests} | {r.errors} | {r.requests_per_s:.2f} | {r.pairs_per_s:.1f} | "
            f"{r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.p99_ms / r.p50_ms:.2f} | {hits} |"
        )
    cached = [r for r in results if r.cache_hits]
    if cached:
        rows.append("")
        rows.append(
            "note: "
            + "; ".join(f"{r.concurrency} clients: {r.cache_hits} of {r.pairs} pairs" for r in cached)
            + " came from the server's passage cache, not the model: those pairs/s are not model throughput."
        )
    if results and all(r.cache_hits is None for r in results):
        rows.append("")
        rows.append("note: the server exposes no rankserve_passage_cache_hits_total: cache hits unknown.")
    return "\n".join(rows)


def to_json(results: Sequence[LevelResult]) -> str:
    return json.dumps(
        [{**asdict(r), "requests_per_s": r.requests_per_s, "pairs_per_s": r.pairs_per_s} for r in results], indent=2
    )


def add_command(sub) -> None:  # argparse subparsers
    p = sub.add_parser("bench", help="load-test a NIM-compatible /v1/ranking endpoint")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model id to send (default: none)")
    p.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--passages", default="20-100", help="passages per request, LO-HI")
    p.add_argument("--tokens", default="16-256", help="words per passage, LO-HI (log-uniform)")
    p.add_argument("--seed", type=int, default=0, help="picks the requests: same seed, same requests on any server")
    p.add_argument(
        "--same-passages",
        action="store_true",
        help="send the same requests at every level (default: fresh passages per level, so no level "
        "is answered from a passage cache filled by the one before)",
    )
    p.add_argument("--json", dest="json_out", default=None, help="also write results as JSON here")
    p.set_defaults(func=_cmd)


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def _cmd(args) -> int:
    results = run(
        args.url,
        [int(c) for c in args.concurrency.split(",")],
        args.requests,
        _range(args.passages),
        _range(args.tokens),
        args.seed,
        args.model,
        same_passages=args.same_passages,
    )
    print(table(results))
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(to_json(results))
    return 0 if all(r.errors == 0 for r in results) else 1
