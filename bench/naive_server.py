"""The naive peer: FastAPI + sentence-transformers CrossEncoder.predict per request, no batching
across requests (what many teams write first). Same /v1/ranking shape as rankserve.

    MODEL_DIR=... uvicorn naive_server:app --app-dir bench --port 8001
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sentence_transformers import CrossEncoder

model = CrossEncoder(os.environ["MODEL_DIR"], device="cpu")
app = FastAPI()


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
    scores = await run_in_threadpool(model.predict, pairs, batch_size=32, activation_fn=torch.nn.Identity(),
                                     show_progress_bar=False)
    order = sorted(range(len(pairs)), key=lambda i: -float(scores[i]))
    return {"rankings": [{"index": i, "logit": float(scores[i])} for i in order]}
