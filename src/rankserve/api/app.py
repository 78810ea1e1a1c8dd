"""create_app: the FastAPI application, its lifespan (load, warm up, stop) and its middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI

from rankserve import __version__
from rankserve.api import compat
from rankserve.api.error_handlers import install_handlers
from rankserve.api.routes import router
from rankserve.api.ui import install_ui
from rankserve.config import ServerConfig
from rankserve.engine.engine import Engine, served_name
from rankserve.errors import PayloadTooLarge, RankserveError, error_body, status_of
from rankserve.logs import request_id
from rankserve.metrics import Metrics

log = logging.getLogger("rankserve")
access = logging.getLogger("rankserve.access")


class BodyLimit:
    """Reject bodies over ``limit`` bytes with 413 before they are buffered (declared or streamed)."""

    def __init__(self, app: Any, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Any) -> None:
        import json

        exc = PayloadTooLarge(f"request body exceeds {self.limit} bytes (max_request_bytes)")
        status, type_ = status_of(exc)
        self.metrics.rejections.labels(type_).inc()
        body = json.dumps(error_body(status, type_, exc.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class RequestObserver:
    """Per request: the request id (``X-Request-Id`` accepted or generated, echoed), the access log
    line, Prometheus counts by route template and status, and the count of requests in flight that
    a graceful shutdown waits for."""

    def __init__(self, app: Any, metrics: Metrics, state: Any, replica: str | None = None):
        self.app, self.metrics, self.state = app, metrics, state
        self.extra = [(b"x-rankserve-replica", replica.encode())] if replica else []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        rid = client_request_id(scope) or uuid.uuid4().hex
        token = request_id.set(rid)
        self.state.active += 1

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode()), *self.extra]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.state.active -= 1
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            label = getattr(route, "path", "other")
            self.metrics.requests.labels(label, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            access.info(
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                },
            )
            request_id.reset(token)


def client_request_id(scope: dict) -> str | None:
    """The client's X-Request-Id if it is a sane token (printable ASCII, <= 128 chars), else None."""
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if 0 < len(text) <= 128 and text.isascii() and text.isprintable():
                return text
    return None


def create_app(
    config: ServerConfig,
    engine: Engine | Sequence[Engine] | None = None,
    on_fatal: Callable[[str], None] | None = None,
    replica: str | None = None,
) -> FastAPI:
    """Build the app. Without ``engine`` the lifespan loads the configured model(s) in a thread, one
    engine each (``config.model_entries``); ready flips when every one is warmed up.

    Pre-built engines (``engine``: one or several, e.g. a Ray Serve replica's) are started during the
    lifespan's start-up itself, so the app is ready when start-up returns.

    ``on_fatal(message)`` is called when the app cannot go on (a model failed to load, a model
    worker died): ``api.server.serve`` uses it to stop and exit non-zero so a supervisor restarts it.
    ``replica`` names this copy of the app in every response's ``X-Rankserve-Replica`` header.
    """
    metrics = Metrics()  # HTTP metrics; each engine keeps its own (metrics.render labels them by model)
    prebuilt = None if engine is None else [engine] if isinstance(engine, Engine) else list(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        if config.grpc_port:  # listening before the models load: ServerLive yes, ServerReady not yet
            from rankserve.api import grpc_service  # grpcio is the optional [grpc] extra

            grpc_server = await grpc_service.start(app.state)
        loader = asyncio.get_running_loop().create_task(_bring_up(app, prebuilt))
        if prebuilt is not None:
            await asyncio.shield(loader)  # warm-up only: ready before start-up returns
        try:
            yield
        finally:
            if grpc_server is not None:  # admitted calls finish (new ones were refused while draining)
                await grpc_server.stop(grace=config.drain_timeout)
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loader
            # Not ready before the engines stop: a late request gets a 503, never a stopped engine.
            app.state.ready = False
            stopping, app.state.engines, app.state.engine = app.state.engines, {}, None
            for running in stopping.values():
                await running.stop()

    # docs_url/redoc_url off: FastAPI's pages load Swagger UI from a CDN; ui.py serves them locally.
    app = FastAPI(
        title="rankserve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Reranking and embeddings with NVIDIA NIM-compatible APIs",
    )
    app.state.config = config
    app.state.metrics = metrics
    app.state.engines = {}  # served name -> started Engine, in --model order
    app.state.engine = None  # the first of them
    app.state.ready = False
    app.state.draining = False  # SIGTERM received: readiness 503, new work refused
    app.state.active = 0  # HTTP requests in flight
    app.state.fatal = None  # why the app cannot serve (load failure, dead worker)
    app.state.on_fatal = on_fatal
    app.state.api_keys = tuple(k.encode("utf-8") for k in config.api_keys())
    app.state.served_names = (
        [e.name for e in prebuilt]
        if prebuilt is not None
        else [served_name(config.for_model(*entry)) for entry in config.model_entries()]
    )
    app.state.created = int(time.time())
    install_handlers(app)
    app.include_router(router)
    app.include_router(compat.router)
    if config.ui:
        install_ui(app)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes, metrics=metrics)
    app.add_middleware(RequestObserver, metrics=metrics, state=app.state, replica=replica)
    return app


def fail(app: FastAPI, message: str) -> None:
    """The app cannot serve any more: readiness says why, and the server (if any) exits non-zero."""
    app.state.fatal = message
    app.state.ready = False
    log.error("cannot serve: %s", message)
    if app.state.on_fatal is not None:
        app.state.on_fatal(message)


async def _bring_up(app: FastAPI, prebuilt: list[Engine] | None) -> None:
    config: ServerConfig = app.state.config
    try:
        engines = list(prebuilt or [])
        if prebuilt is None:
            for entry in config.model_entries():  # one after another: peak memory is one load at a time
                engines.append(await asyncio.to_thread(Engine.load, config.for_model(*entry), Metrics()))
        for e in engines:
            e.batcher.on_fatal = lambda why, name=e.name: fail(app, f"model {name}: {why}")
            await e.start()
            app.state.engines[e.name] = e
        app.state.engine = engines[0]
        app.state.ready = True
        log.info("ready: serving %s", ", ".join(app.state.engines))
    except Exception as exc:  # one line says why; the traceback only at debug level
        log.debug("model start-up failed", exc_info=exc)
        fail(app, f"model failed to load: {exc.message if isinstance(exc, RankserveError) else repr(exc)}")
