"""Domain errors and the one table that maps them to HTTP statuses and JSON bodies.

Code anywhere raises these; only ``install_handlers`` turns them into responses. Every error body
has the same shape, readable by NIM clients (``detail``) and the OpenAI SDK (``error.message``):

    {"error": {"message": str, "type": str, "code": int, "param": str | None}, "detail": str | list}
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("rankserve")


class RankserveError(Exception):
    """Base: ``status`` and ``type`` come from the table below, keyed by class."""

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class ConfigError(RankserveError):
    """A setting is invalid: raised at start, before serving."""


class ModelLoadError(RankserveError):
    """The model directory cannot be loaded (unsupported architecture, missing files, bad keys)."""


class InvalidRequest(RankserveError):
    """The request is well-formed JSON but asks for something this server cannot do."""


class InputTooLong(InvalidRequest):
    """An input exceeds the token limit and the request asked for no truncation."""


class Unauthorized(RankserveError):
    """Missing or wrong API key."""


class PayloadTooLarge(RankserveError):
    """The request body exceeds ``max_request_bytes``."""


class NotReady(RankserveError):
    """The model is still loading or warming up."""


class Overloaded(RankserveError):
    """The admission queue is full; the client should retry later."""


class ModelFailure(RankserveError):
    """The forward pass failed; every request in that batch gets this."""


# The table: error class -> (HTTP status, error type string).
STATUS: dict[type[RankserveError], tuple[int, str]] = {
    InputTooLong: (400, "input_too_long"),
    InvalidRequest: (400, "invalid_request_error"),
    Unauthorized: (401, "authentication_error"),
    PayloadTooLarge: (413, "payload_too_large"),
    NotReady: (503, "not_ready"),
    Overloaded: (503, "overloaded"),
    ModelFailure: (500, "model_error"),
    ConfigError: (500, "config_error"),
    ModelLoadError: (500, "model_load_error"),
}
VALIDATION_STATUS = 422


def status_of(exc: RankserveError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "internal_error"


def error_body(status: int, type_: str, message: str, param: str | None = None, detail: Any = None) -> dict:
    return {
        "error": {"message": message, "type": type_, "code": status, "param": param},
        "detail": message if detail is None else detail,
    }


def install_handlers(app: Any) -> None:
    """Register the table on a FastAPI app: domain errors, validation errors, anything else."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def domain(_request: Any, exc: RankserveError) -> JSONResponse:
        status, type_ = status_of(exc)
        return JSONResponse(error_body(status, type_, exc.message, exc.param), status_code=status, headers=exc.headers)

    async def validation(_request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {k: v for k, v in e.items() if k in ("type", "loc", "msg", "input")} for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        message = f"{where}: {first['msg']}"
        return JSONResponse(
            error_body(VALIDATION_STATUS, "validation_error", message, where, _jsonable(errors)),
            status_code=VALIDATION_STATUS,
        )

    async def http(_request: Any, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, "http_error", str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def unexpected(_request: Any, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body(500, "internal_error", f"internal error: {type(exc).__name__}"), status_code=500)

    app.add_exception_handler(RankserveError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, unexpected)


def _jsonable(value: Any) -> Any:
    """Pydantic error dicts may hold bytes or exceptions; keep only JSON types."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
