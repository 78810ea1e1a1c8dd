"""Domain errors and the one table that maps them to HTTP statuses and JSON bodies.

Code anywhere raises these; only ``api/error_handlers.py`` turns them into HTTP responses. Every error body
has the same shape, readable by NIM clients (``detail``) and the OpenAI SDK (``error.message``):

    {"error": {"message": str, "type": str, "code": int, "param": str | None}, "detail": str | list}
"""

from __future__ import annotations

import logging
import math
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


class UnknownModel(InvalidRequest):
    """The request names a model this server does not serve."""


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


class RequestTimeout(RankserveError):
    """The request did not finish within ``request_timeout``; its queued work was dropped."""


class ClientDisconnected(RankserveError):
    """The client left before its answer was ready; its queued work was dropped (nobody reads this)."""


class ShuttingDown(RankserveError):
    """The server is draining (SIGTERM): admitted requests finish, new ones are refused."""


# The table: error class -> (HTTP status, error type string, gRPC status code name). The gRPC codes
# are those NIM documents for its KServe V2 endpoint (a full queue is RESOURCE_EXHAUSTED, bad input
# INVALID_ARGUMENT); api/grpc_service.py reads them by name from ``grpc.StatusCode``.
STATUS: dict[type[RankserveError], tuple[int, str, str]] = {
    InputTooLong: (400, "input_too_long", "INVALID_ARGUMENT"),
    UnknownModel: (400, "invalid_request_error", "NOT_FOUND"),
    InvalidRequest: (400, "invalid_request_error", "INVALID_ARGUMENT"),
    Unauthorized: (401, "authentication_error", "UNAUTHENTICATED"),
    PayloadTooLarge: (413, "payload_too_large", "INVALID_ARGUMENT"),
    ClientDisconnected: (499, "client_closed_request", "CANCELLED"),  # nginx's code; logged and counted, never read
    NotReady: (503, "not_ready", "UNAVAILABLE"),
    Overloaded: (503, "overloaded", "RESOURCE_EXHAUSTED"),
    ShuttingDown: (503, "shutting_down", "UNAVAILABLE"),
    RequestTimeout: (504, "timeout", "DEADLINE_EXCEEDED"),
    ModelFailure: (500, "model_error", "INTERNAL"),
    ConfigError: (500, "config_error", "INTERNAL"),
    ModelLoadError: (500, "model_load_error", "INTERNAL"),
}
VALIDATION_STATUS = 422
UNKNOWN = (500, "internal_error", "INTERNAL")


def _row(exc: RankserveError) -> tuple[int, str, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return UNKNOWN


def status_of(exc: RankserveError) -> tuple[int, str]:
    """(HTTP status, error type) for a domain error."""
    status, type_, _ = _row(exc)
    return status, type_


def grpc_code_of(exc: RankserveError) -> str:
    """The gRPC status code name (``grpc.StatusCode`` member) for a domain error."""
    return _row(exc)[2]


def error_body(status: int, type_: str, message: str, param: str | None = None, detail: Any = None) -> dict[str, Any]:
    """The one error shape; every string in it is made encodable (see ``safe_json``)."""
    message, param = safe_json(message), safe_json(param)
    return {
        "error": {"message": message, "type": type_, "code": status, "param": param},
        "detail": message if detail is None else safe_json(detail),
    }


MAX_ECHO_CHARS = 200  # characters of any echoed string (client input comes back in pydantic's ``input``)
MAX_ECHO_ITEMS = 20  # items of any echoed list or object


def safe_json(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded copy of ``value`` for an error body.

    Error bodies echo client input (pydantic's ``input``, a requested model name), and that input
    can be anything JSON allows: lone UTF-16 surrogates (not encodable as UTF-8: rendering them
    turned a 422 into a 500 and dropped the connection), NaN/Infinity (not JSON), megabytes of
    text. Strings get surrogates escaped as ``\\udXXX`` and are cut to MAX_ECHO_CHARS, containers
    to MAX_ECHO_ITEMS and depth 8; non-finite floats and other types become their ``repr``.
    """
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) < 1 << 63 else repr(value)[:MAX_ECHO_CHARS]
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= MAX_ECHO_CHARS else f"{text[:MAX_ECHO_CHARS]}... ({len(text)} characters)"
    if depth >= 8:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ECHO_ITEMS]
        return {str(safe_json(k, depth + 1)): safe_json(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [safe_json(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
    return safe_json(repr(value), depth + 1)
