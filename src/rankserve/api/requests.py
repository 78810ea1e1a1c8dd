"""What every API surface does with a request, whatever its shape: REST routes (routes.py), the
compat APIs (compat.py) and gRPC (grpc_service.py) all call these, so limits, auth, priorities,
deadlines and disconnects behave the same on each."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Iterable
from typing import Any, Literal, TypeVar

from fastapi import Request

from rankserve.config import ServerConfig
from rankserve.engine.batcher import PRIORITIES, Priority
from rankserve.engine.engine import EmbedResult, Engine, RankResult
from rankserve.errors import (
    ClientDisconnected,
    InvalidRequest,
    NotReady,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    Unauthorized,
    UnknownModel,
)

T = TypeVar("T")


def engines_of(request: Request) -> dict[str, Engine]:
    """The served engines by name, once every one is ready (503 while loading or draining)."""
    return ready_engines(request.app.state)


def ready_engines(state: Any) -> dict[str, Engine]:
    """``engines_of`` for any front end holding the app's state (HTTP routes, the gRPC service)."""
    if state.draining:
        raise ShuttingDown(
            "server is shutting down; retry on another replica", headers={"Retry-After": "1", "Connection": "close"}
        )
    if state.fatal is not None:
        raise NotReady(
            f"server failed and is stopping ({state.fatal}); retry on another replica", headers={"Retry-After": "5"}
        )
    if not state.engines or not state.ready:
        raise NotReady("model is loading; retry shortly", headers={"Retry-After": "2"})
    engines: dict[str, Engine] = state.engines
    return engines


Job = Literal["rank", "embed"]
# With ``model`` omitted, the first served model that can do the job: ranking prefers a
# cross-encoder and falls back to a bi-encoder (cosine ranking); embeddings need an embedder.
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {"rank": ("cross-encoder", "embedder"), "embed": ("embedder",)}


def engine_for(
    request: Request, requested: str | None, job: Job, suffixes: tuple[str, ...] = ()
) -> tuple[Engine, str | None]:
    """The engine a request's ``model`` names (optionally with an allowed ``-suffix``, returned
    too), or the default for ``job``; 400 naming the served models otherwise."""
    engines = engines_of(request)
    if requested is None:
        for kind in DEFAULT_KINDS[job]:
            for engine in engines.values():
                if engine.spec.kind == kind:
                    return engine, None
        kinds = ", ".join(
            f"{name!r} is a {'reranker (cross-encoder)' if e.spec.kind == 'cross-encoder' else e.spec.kind}"
            for name, e in engines.items()
        )
        raise InvalidRequest(
            f"no model served here can {'rank' if job == 'rank' else 'produce embeddings'}: {kinds}", param="model"
        )
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
        raise Unauthorized(
            "missing or invalid API key (send Authorization: Bearer <key>)", headers={"WWW-Authenticate": "Bearer"}
        )


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
            raise PayloadTooLarge(
                f"{field}[{i}] has {len(text)} characters; the limit is {limit} per text (max_text_chars)",
                param=f"{field}.{i}",
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(
                    f"{field}[{i}] is not valid Unicode: a lone UTF-16 surrogate at character {exc.start}",
                    param=f"{field}.{i}",
                ) from None


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
        except TimeoutError:
            raise RequestTimeout(
                f"the request did not finish within {timeout:g} s (request_timeout); its queued work was dropped"
            ) from None
    finally:
        watcher.cancel()


def check_rank_input(config: ServerConfig, query: str, texts: list[str], field: str) -> None:
    """A rerank request's per-request limits (HTTP and gRPC): passage count and text sizes."""
    if len(texts) > config.max_passages:
        raise InvalidRequest(f"{len(texts)} {field} exceed the limit of {config.max_passages} per request", param=field)
    check_texts(config, [query], "query")
    check_texts(config, texts, field)


def check_embed_input(config: ServerConfig, texts: list[Any], field: str) -> None:
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


async def rank_request(
    request: Request,
    engine: Engine,
    query: str,
    texts: list[str],
    truncate: str,
    field: str,
    images: list[str | None] | None = None,
) -> RankResult:
    """What every rerank route does: the per-request limits and the engine call (with the request's
    priority, deadline and disconnect handling); ``.order`` of the result is best first. ``images``:
    per passage a data URL or None (NIM's VL reranker shape)."""
    check_rank_input(request.app.state.config, query, texts, field)
    work = engine.rank(query, texts, truncate, priority_of(request), images)  # type: ignore[arg-type]
    return await unless_disconnected(request, work)


async def embed_request(
    request: Request,
    engine: Engine,
    texts: list[Any],
    input_type: str | None,
    truncate: str,
    dimensions: int | None,
    field: str = "input",
) -> EmbedResult:
    """What every embedding route does: the per-request checks and limits, then the engine call
    (with the request's priority, deadline and disconnect handling)."""
    check_embed_input(request.app.state.config, texts, field)
    work = engine.embed(texts, input_type, truncate, dimensions, priority_of(request))  # type: ignore[arg-type]
    return await unless_disconnected(request, work)
