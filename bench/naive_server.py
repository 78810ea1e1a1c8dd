"""The naive peer: FastAPI + one peer scorer per request, no batching across requests (what many
teams write first). Same /v1/ranking shape as rankserve. ``PEER`` picks the scorer from
bench/peer_scorers.py (default ``st-torch``: sentence-transformers ``CrossEncoder.predict``);
``WORK_DIR`` is where peers that need ONNX keep their export. ``PEER_SERIAL=1``: one scorer call
at a time (a lock), the careful wrapper: concurrent calls each take every core and oversubscribe.

    MODEL_DIR=... [PEER=st-onnx] uvicorn naive_server:app --app-dir bench --port 8001
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from peer_scorers import make_scorer
from pydantic import BaseModel

score = make_scorer(
    os.environ.get("PEER", "st-torch"),
    Path(os.environ["MODEL_DIR"]),
    Path(os.environ.get("WORK_DIR", Path(tempfile.gettempdir()) / "rankserve-peers")),
)
app = FastAPI()
lock = threading.Lock() if os.environ.get("PEER_SERIAL") == "1" else None


def score_serially(pairs: list[tuple[str, str]]) -> list[float]:
    if lock is None:
        return score(pairs)
    with lock:
        return score(pairs)


class Text(BaseModel):
    text: str


class Body(BaseModel):
    query: Text
    passages: list[Text]


@app.get("/v1/health/ready")
def ready() -> dict:
    return {"status": "ready"}


@app.post("/v1/ranking")
async def ranking(body: Body) -> dict:
    pairs = [(body.query.text, p.text) for p in body.passages]
    scores = await run_in_threadpool(score_serially, pairs)
    order = sorted(range(len(pairs)), key=lambda i: -scores[i])
    return {"rankings": [{"index": i, "logit": scores[i]} for i in order]}
