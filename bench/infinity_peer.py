"""Infinity (infinity-emb 0.0.78) as a peer: run with the Python of a separate venv, since it pins
sentence-transformers<4 and numpy<2:

    python -m venv /tmp/infvenv && /tmp/infvenv/bin/pip install torch==2.13.0 'infinity-emb[torch]==0.0.78'
    /tmp/infvenv/bin/python bench/infinity_peer.py MODEL_DIR WORKLOAD.json ROUNDS

WORKLOAD.json is [[query, [passage, ...]], ...]. All queries are submitted concurrently (Infinity
batches across them). Prints one JSON line: best seconds over ROUNDS and the scores of the last round.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def main(model_dir: str, workload_file: str, rounds: int) -> None:
    from infinity_emb import AsyncEngineArray, EngineArgs

    work = json.load(open(workload_file))
    array = AsyncEngineArray.from_args(
        [EngineArgs(model_name_or_path=model_dir, engine="torch", device="cpu", model_warmup=True)]
    )
    engine = array[0]
    async with engine:
        await engine.rerank(query=work[0][0], docs=work[0][1][:8], raw_scores=True)
        best, scores = float("inf"), []
        for _ in range(rounds):
            t = time.perf_counter()
            results = await asyncio.gather(*(engine.rerank(query=q, docs=ps, raw_scores=True) for q, ps in work))
            best = min(best, time.perf_counter() - t)
            # Results come sorted by score; put them back in request order.
            scores = [float(x.relevance_score) for r in results for x in sorted(r[0], key=lambda x: x.index)]
    print(json.dumps({"seconds": best, "scores": scores}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
