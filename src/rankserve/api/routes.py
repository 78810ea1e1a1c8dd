"""Thin routes: schema -> engine call -> schema. No model logic lives here."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from rankserve.api import schemas as s
from rankserve.api.requests import check_auth, embed_request, engine_for, rank_request
from rankserve.metrics import render as render_metrics

router = APIRouter()


@router.post("/v1/ranking", response_model=s.RankingResponse, responses=s.ERRORS, dependencies=[Depends(check_auth)])
async def ranking(body: s.RankingRequest, request: Request) -> s.RankingResponse:
    engine, _ = engine_for(request, body.model, "rank")
    texts = [p.text or "" for p in body.passages]
    images = [p.image for p in body.passages]
    truncate = body.truncate or request.app.state.config.truncate_default
    result = await rank_request(
        request, engine, body.query.text, texts, truncate, "passages", images if any(images) else None
    )
    order = result.order[: body.top_k or body.top_n]
    return s.RankingResponse(
        rankings=[s.Ranking(index=i, logit=result.scores[i]) for i in order],
        usage=s.Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )


@router.post(
    "/v1/embeddings", response_model=s.EmbeddingsResponse, responses=s.ERRORS, dependencies=[Depends(check_auth)]
)
async def embeddings(body: s.EmbeddingsRequest, request: Request) -> s.EmbeddingsResponse:
    engine, suffix_type = engine_for(request, body.model, "embed", ("query", "passage"))
    texts = [body.input] if isinstance(body.input, str) else body.input
    result = await embed_request(request, engine, texts, body.input_type or suffix_type, body.truncate, body.dimensions)
    vectors = result.vectors
    if body.encoding_format == "base64":
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        data = vectors.astype(np.float64).tolist()  # float32 values, printed exactly
    return s.EmbeddingsResponse(
        data=[s.Embedding(index=i, embedding=e) for i, e in enumerate(data)],
        model=body.model or engine.name,
        usage=s.Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )


@router.get("/v1/health/live", response_model=s.HealthResponse)
async def live() -> s.HealthResponse:
    return s.HealthResponse(message="Service is live.", status="live")


@router.get("/v1/health/ready", response_model=s.HealthResponse, responses={503: {"model": s.HealthResponse}})
async def ready(request: Request) -> Any:
    state = request.app.state
    if state.ready and not state.draining and state.fatal is None:
        return s.HealthResponse(message="Service is ready.", status="ready")
    if state.draining:
        message, status = "Service is shutting down: finishing admitted requests.", "draining"
    elif state.fatal is not None:
        message, status = f"Service failed: {state.fatal}", "failed"
    else:
        message, status = "Service is not ready: model is loading.", "not_ready"
    return JSONResponse(s.HealthResponse(message=message, status=status).model_dump(), status_code=503)


@router.get("/v1/models", response_model=s.ModelList, dependencies=[Depends(check_auth)])
async def models(request: Request) -> s.ModelList:
    state = request.app.state
    return s.ModelList(
        data=[
            s.ModelCard(id=name, created=state.created, owned_by="rankserve", root=name) for name in state.served_names
        ]
    )


@router.get("/v1/metrics", include_in_schema=False)
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state = request.app.state
    body = render_metrics(state.metrics, {name: engine.metrics for name, engine in state.engines.items()})
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
