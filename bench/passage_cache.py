"""Bi-encoder ranking with the passage cache: first request vs the same passages again.

The default model (all-MiniLM-L6-v2) in-process; a request of N passages (~128 words each), then
the same passages with a different query (the RAG pattern: chunks come back, queries change).
Prints each latency, best of several distinct passage sets, and the ratio first/repeat.

    python bench/passage_cache.py [--passages 100] [--sets 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import text_of  # noqa: E402

from rankserve.config import load_config  # noqa: E402
from rankserve.engine.engine import Engine  # noqa: E402
from rankserve.metrics import Metrics  # noqa: E402


async def main(passages: int, sets: int) -> None:
    engine = Engine.load(load_config(environ={}), Metrics())
    await engine.start()
    rng = random.Random(0)
    firsts, repeats = [], []
    for s in range(sets):
        texts = [f"set {s} passage {i}: " + text_of(128, rng) for i in range(passages)]
        t = time.perf_counter()
        await engine.rank(text_of(8, rng), texts)
        firsts.append(time.perf_counter() - t)
        t = time.perf_counter()
        await engine.rank(text_of(8, rng), texts)
        repeats.append(time.perf_counter() - t)
    await engine.stop()
    first, repeat = min(firsts), min(repeats)
    print(
        f"{passages} passages: first {first * 1000:.1f} ms, repeated {repeat * 1000:.2f} ms, "
        f"first/repeated {first / repeat:.0f}x (best of {sets}; cache hits {int(engine.metrics.cache_hits._value.get())})"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=100)
    ap.add_argument("--sets", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.passages, args.sets))
