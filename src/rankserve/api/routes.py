"""Thin routes: schema -> engine call -> schema. No model logic lives here."""

from __future__ import annotations

import asyncio
import base64
import hmac
from typing import Any, Awaitable, Iterable, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from rankserve.api import schemas as s
from rankserve.config import ServerConfig
from rankserve.engine.batcher import PRIORITIES, Priority
from rankserve.engine.engine import EmbedResult, Engine, RankResult
from rankserve.errors import (ClientDisconnected, InvalidRequest, NotReady, PayloadTooLarge, RequestTimeout, ShuttingDown,
                              Unauthorized, UnknownModel)
from rankserve.metrics import render as render_metrics

T = TypeVar("T")
router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorResponse, "description": why}
    for code, why in (
        (400, "Invalid request (wrong model, too long with truncate NONE, too many inputs)"),
        (401, "Missing or wrong API key (only when an API key is configured)"),
        (413, "Request body, a text or the request's tokens over a limit"),
        (422, "Schema validation failed"),
        (500, "Model failure"),
        (503, "Not ready yet, shutting down, or at capacity (see Retry-After)"),
        (504, "The request took longer than the request timeout; its queued work was dropped"),
    )
}


def engines_of(request: Request) -> dict[str, Engine]:
    """The served engines by name, once every one is ready (503 while loading or draining)."""
    return ready_engines(request.app.state)


def ready_engines(state: Any) -> dict[str, Engine]:
    """``engines_of`` for any front end holding the app's state (HTTP routes, the gRPC service)."""
    if state.draining:
        raise ShuttingDown("server is shutting down; retry on another replica",
                           headers={"Retry-After": "1", "Connection": "close"})
    if state.fatal is not None:
        raise NotReady(f"server failed and is stopping ({state.fatal}); retry on another replica",
                       headers={"Retry-After": "5"})
    if not state.engines or not state.ready:
        raise NotReady("model is loading; retry shortly", headers={"Retry-After": "2"})
    return state.engines


Job = Literal["rank", "embed"]
# With ``model`` omitted, the first served model that can do the job: ranking prefers a
# cross-encoder and falls back to a bi-encoder (cosine ranking); embeddings need an embedder.
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {"rank": ("cross-encoder", "embedder"), "embed": ("embedder",)}


def engine_for(request: Request, requested: str | None, job: Job,
               suffixes: tuple[str, ...] = ()) -> tuple[Engine, str | None]:
    """The engine a request's ``model`` names (optionally with an allowed ``-suffix``, returned
    too), or the default for ``job``; 400 naming the served models otherwise."""
    engines = engines_of(request)
    if requested is None:
        for kind in DEFAULT_KINDS[job]:
            for engine in engines.values():
                if engine.spec.kind == kind:
                    return engine, None
        kinds = ", ".join(f"{name!r} is a {'reranker (cross-encoder)' if e.spec.kind == 'cross-encoder' else e.spec.kind}"
                          for name, e in engines.items())
        raise InvalidRequest(f"no model served here can {'rank' if job == 'rank' else 'produce embeddings'}: {kinds}",
                             param="model")
    if requested in engines:
        return engines[requested], None
    for name, engine in engines.items():
        for suffix in suffixes:
            if requested == f"{name}-{suffix}":
                return engine, suffix
    served = ", ".join(map(repr, engines))
    raise UnknownModel(f"model {requested!r} is not served here; this server serves {served}", param="model")


def check_auth(request: Request) -> None:
    """With API keys configured, require one as a Bearer token; without any, accept anything.

    Every key is compared in constant time (``hmac.compare_digest``), and all of them are compared,
    so neither the time nor the number of comparisons says how much of a guess was right.
    """
    if not authorized(request.app.state.api_keys, request.headers.get("authorization", "")):
        raise Unauthorized("missing or invalid API key (send Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})


def authorized(keys: tuple[bytes, ...], header: str) -> bool:
    """``header`` (an Authorization value) is ``Bearer <one of keys>``; anything passes with no keys."""
    if not keys:
        return True
    scheme, _, token = header.partition(" ")
    given = token.strip().encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return scheme.lower() == "bearer" and matched


def check_texts(config: ServerConfig, texts: Iterable[str], field: str) -> None:
    """Each text within ``max_text_chars`` (413 naming the text and the limit) and valid Unicode.

    JSON may carry lone UTF-16 surrogates (``"\\ud83d"``, an emoji cut in half) and pydantic lets
    some through inside unions; the tokenizer cannot take them, so they are a 400 here, not a 500.
    """
    limit = config.max_text_chars
    for i, text in enumerate(texts):
        if len(text) > limit:
            raise PayloadTooLarge(f"{field}[{i}] has {len(text)} characters; the limit is {limit} per text "
                                  "(max_text_chars)", param=f"{field}.{i}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(f"{field}[{i}] is not valid Unicode: a lone UTF-16 surrogate at character "
                                     f"{exc.start}", param=f"{field}.{i}") from None


def priority_of(request: Request) -> Priority:
    """``X-Priority: interactive`` (default) or ``batch``: batch work yields to interactive work."""
    return parse_priority(request.headers.get("x-priority", "interactive"))


def parse_priority(value: str) -> Priority:
    """A priority header's (or gRPC metadata's) value, checked."""
    value = value.strip().lower()
    if value not in PRIORITIES:
        raise InvalidRequest(f"X-Priority must be one of {', '.join(PRIORITIES)}", param="X-Priority")
    return value  # type: ignore[return-value]


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` within the request timeout; if the client disconnects first, or the deadline
    passes (504), cancel it so its queued items are dropped."""
    timeout = request.app.state.config.request_timeout or None
    task = asyncio.ensure_future(asyncio.wait_for(work, timeout))

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
            raise ClientDisconnected("client disconnected; its queued work was dropped")
        try:
            return task.result()
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request did not finish within {timeout:g} s (request_timeout); "
                                 "its queued work was dropped") from None
    finally:
        watcher.cancel()


def check_rank_input(config: ServerConfig, query: str, texts: list[str], field: str) -> None:
    """A rerank request's per-request limits (HTTP and gRPC): passage count and text sizes."""
    if len(texts) > config.max_passages:
        raise InvalidRequest(f"{len(texts)} {field} exceed the limit of {config.max_passages} per request", param=field)
    check_texts(config, [query], "query")
    check_texts(config, texts, field)


def check_embed_input(config: ServerConfig, texts: list, field: str) -> None:
    """An embedding request's checks and limits (HTTP and gRPC): strings, none empty, count, sizes."""
    if not texts:
        raise InvalidRequest(f"{field} is an empty list: send at least one string", param=field)
    if any(not isinstance(t, str) for t in texts):
        raise InvalidRequest(f"{field} holds token ids; this server accepts only strings", param=field)
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise InvalidRequest(f"{field}[{empty}] is an empty string", param=f"{field}.{empty}")
    if len(texts) > config.max_inputs:
        raise InvalidRequest(f"{len(texts)} inputs exceed the limit of {config.max_inputs} per request", param=field)
    check_texts(config, texts, field)


async def rank_request(request: Request, engine: Engine, query: str, texts: list[str], truncate: str,
                       field: str, images: list[str | None] | None = None) -> tuple[RankResult, list[int]]:
    """What every rerank route does: the per-request limits, the engine call (with the request's
    priority, deadline and disconnect handling), and the passage indices best first. ``images``:
    per passage a data URL or None (NIM's VL reranker shape)."""
    check_rank_input(request.app.state.config, query, texts, field)
    work = engine.rank(query, texts, truncate, priority_of(request), images)  # type: ignore[arg-type]
    result = await unless_disconnected(request, work)
    return result, sorted(range(len(texts)), key=lambda i: (-result.scores[i], i))


@router.post("/v1/ranking", response_model=s.RankingResponse, responses=ERRORS, dependencies=[Depends(check_auth)])
async def ranking(body: s.RankingRequest, request: Request) -> s.RankingResponse:
    engine, _ = engine_for(request, body.model, "rank")
    texts = [p.text or "" for p in body.passages]
    images = [p.image for p in body.passages]
    truncate = body.truncate or request.app.state.config.truncate_default
    result, order = await rank_request(request, engine, body.query.text, texts, truncate, "passages",
                                       images if any(images) else None)
    top = body.top_k or body.top_n
    if top is not None:
        order = order[:top]
    return s.RankingResponse(
        rankings=[s.Ranking(index=i, logit=result.scores[i]) for i in order],
        usage=s.Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )


async def embed_request(request: Request, engine: Engine, texts: list, input_type: str | None, truncate: str,
                        dimensions: int | None, field: str = "input") -> EmbedResult:
    """What every embedding route does: the per-request checks and limits, then the engine call
    (with the request's priority, deadline and disconnect handling)."""
    check_embed_input(request.app.state.config, texts, field)
    work = engine.embed(texts, input_type, truncate, dimensions, priority_of(request))  # type: ignore[arg-type]
    return await unless_disconnected(request, work)


@router.post("/v1/embeddings", response_model=s.EmbeddingsResponse, responses=ERRORS, dependencies=[Depends(check_auth)])
async def embeddings(body: s.EmbeddingsRequest, request: Request) -> s.EmbeddingsResponse:
    engine, suffix_type = engine_for(request, body.model, "embed", ("query", "passage"))
    texts = [body.input] if isinstance(body.input, str) else body.input
    result = await embed_request(request, engine, texts, body.input_type or suffix_type, body.truncate,
                                 body.dimensions)
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
    return s.ModelList(data=[s.ModelCard(id=name, created=state.created, owned_by="rankserve", root=name)
                             for name in state.served_names])


@router.get("/v1/metrics", include_in_schema=False)
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state = request.app.state
    body = render_metrics(state.metrics, {name: engine.metrics for name, engine in state.engines.items()})
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
