"""create_app: the FastAPI application, its lifespan (load, warm up, drain) and its middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI

from rankserve import __version__
from rankserve.api import compat
from rankserve.api.routes import router
from rankserve.config import ServerConfig
from rankserve.engine.engine import Engine, served_name
from rankserve.errors import PayloadTooLarge, error_body, install_handlers, status_of
from rankserve.metrics import Metrics

log = logging.getLogger("rankserve")


class BodyLimit:
    """Reject bodies over ``limit`` bytes with 413 before they are buffered (declared or streamed)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

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

        exc = PayloadTooLarge(f"request body exceeds {self.limit} bytes")
        status, type_ = status_of(exc)
        body = json.dumps(error_body(status, type_, exc.message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class RequestMetrics:
    """Count every response by route template and status, and time it."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "other")
            self.metrics.requests.labels(label, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)


def create_app(config: ServerConfig, engine: Engine | None = None) -> FastAPI:
    """Build the app. Without ``engine`` the lifespan loads one in a thread; ready flips after warm-up."""
    metrics = engine.metrics if engine is not None else Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.get_running_loop().create_task(_bring_up(app, engine))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loader
            if app.state.engine is not None:
                await app.state.engine.stop()

    app = FastAPI(title="rankserve", version=__version__, lifespan=lifespan,
                  description="Reranking and embeddings with NVIDIA NIM-compatible APIs")
    app.state.config = config
    app.state.metrics = metrics
    app.state.engine = None
    app.state.ready = False
    app.state.load_error = None
    app.state.served_name = engine.name if engine is not None else served_name(config)
    app.state.created = int(time.time())
    install_handlers(app)
    app.include_router(router)
    app.include_router(compat.router)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


async def _bring_up(app: FastAPI, engine: Engine | None) -> None:
    try:
        if engine is None:
            engine = await asyncio.to_thread(Engine.load, app.state.config, app.state.metrics)
        app.state.engine = engine
        await engine.start()
        app.state.ready = True
        log.info("ready: serving %s", engine.name)
    except Exception as exc:  # keep serving health so operators can see why
        app.state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model failed to load")
