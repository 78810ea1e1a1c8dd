"""Thin routes: schema -> engine call -> schema. No model logic lives here."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Awaitable, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from rankserve.api import schemas as s
from rankserve.engine.engine import Engine
from rankserve.errors import InvalidRequest, NotReady, Unauthorized

T = TypeVar("T")
router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorResponse, "description": why}
    for code, why in (
        (400, "Invalid request (wrong model, too long with truncate NONE, too many inputs)"),
        (401, "Missing or wrong API key (only when an API key is configured)"),
        (413, "Request body too large"),
        (422, "Schema validation failed"),
        (500, "Model failure"),
        (503, "Not ready yet, or at capacity (see Retry-After)"),
    )
}


def engine_of(request: Request) -> Engine:
    engine = request.app.state.engine
    if engine is None or not request.app.state.ready:
        raise NotReady("model is loading; retry shortly", headers={"Retry-After": "2"})
    return engine


def check_auth(request: Request) -> None:
    """With an API key configured, require it as a Bearer token; without one, accept anything."""
    key = request.app.state.config.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or token.strip() != key:
        raise Unauthorized("missing or invalid API key (send Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})


def check_model(engine: Engine, requested: str | None, suffixes: tuple[str, ...] = ()) -> str | None:
    """The request's model must name the served model (optionally with an allowed suffix)."""
    if requested is None or requested == engine.name:
        return None
    for suffix in suffixes:
        if requested == f"{engine.name}-{suffix}":
            return suffix
    raise InvalidRequest(f"model {requested!r} is not served here; this server serves {engine.name!r}", param="model")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it so its queued items are dropped."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            # Nobody is listening any more; 499 is nginx's "client closed request".
            return JSONResponse({"detail": "client disconnected"}, status_code=499)  # type: ignore[return-value]
        return task.result()
    finally:
        watcher.cancel()


@router.post("/v1/ranking", response_model=s.RankingResponse, responses=ERRORS, dependencies=[Depends(check_auth)])
async def ranking(body: s.RankingRequest, request: Request) -> s.RankingResponse:
    engine = engine_of(request)
    check_model(engine, body.model)
    limit = request.app.state.config.max_passages
    if len(body.passages) > limit:
        raise InvalidRequest(f"{len(body.passages)} passages exceed the limit of {limit} per request", param="passages")
    result = await unless_disconnected(
        request, engine.rank(body.query.text, [p.text for p in body.passages], body.truncate)
    )
    if isinstance(result, Response):
        return result  # type: ignore[return-value]
    order = sorted(range(len(result.scores)), key=lambda i: (-result.scores[i], i))
    top = body.top_k or body.top_n
    if top is not None:
        order = order[:top]
    return s.RankingResponse(
        rankings=[s.Ranking(index=i, logit=result.scores[i]) for i in order],
        usage=s.Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )


@router.post("/v1/embeddings", response_model=s.EmbeddingsResponse, responses=ERRORS, dependencies=[Depends(check_auth)])
async def embeddings(body: s.EmbeddingsRequest, request: Request) -> s.EmbeddingsResponse:
    engine = engine_of(request)
    suffix_type = check_model(engine, body.model, ("query", "passage"))
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InvalidRequest("input is an empty list: send at least one string", param="input")
    if any(not isinstance(t, str) for t in texts):
        raise InvalidRequest("input holds token ids; this server accepts only strings", param="input")
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise InvalidRequest(f"input[{empty}] is an empty string", param=f"input.{empty}")
    limit = request.app.state.config.max_inputs
    if len(texts) > limit:
        raise InvalidRequest(f"{len(texts)} inputs exceed the limit of {limit} per request", param="input")
    input_type = body.input_type or suffix_type
    result = await unless_disconnected(request, engine.embed(texts, input_type, body.truncate, body.dimensions))
    if isinstance(result, Response):
        return result  # type: ignore[return-value]
    vectors = result.vectors.numpy()
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
    if request.app.state.ready:
        return s.HealthResponse(message="Service is ready.", status="ready")
    failed = request.app.state.load_error
    message = f"Model failed to load: {failed}" if failed else "Service is not ready: model is loading."
    return JSONResponse(s.HealthResponse(message=message, status="not_ready").model_dump(), status_code=503)


@router.get("/v1/models", response_model=s.ModelList, dependencies=[Depends(check_auth)])
async def models(request: Request) -> s.ModelList:
    name = request.app.state.served_name
    return s.ModelList(data=[s.ModelCard(id=name, created=request.app.state.created, owned_by="rankserve", root=name)])


@router.get("/v1/metrics", include_in_schema=False)
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
