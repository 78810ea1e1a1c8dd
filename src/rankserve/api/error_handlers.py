"""Domain errors and FastAPI's own (validation, HTTP) as the one JSON error body (``errors.py``).

The HTTP side of ``errors.py``: the table and the body live there (gRPC uses them too); what a
FastAPI app registers lives here, with the wording of the validation mistakes clients really make.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rankserve.errors import VALIDATION_STATUS, RankserveError, error_body, safe_json, status_of

log = logging.getLogger("rankserve")
MAX_ERRORS = 20  # validation errors echoed per response
OBJECT_TYPES = ("model_attributes_type", "dict_type", "model_type")  # pydantic: "expected an object"
TEXT_OBJECTS = ("query", "passages", "documents")  # fields whose items are {"text": ...} objects


def install_handlers(app: Any) -> None:
    """Register the table on a FastAPI app: domain errors, validation errors, anything else."""

    def count(request: Any, type_: str) -> None:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.rejections.labels(type_).inc()

    async def domain(request: Any, exc: RankserveError) -> JSONResponse:
        status, type_ = status_of(exc)
        count(request, type_)
        return JSONResponse(error_body(status, type_, exc.message, exc.param), status_code=status, headers=exc.headers)

    async def validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {k: v for k, v in e.items() if k in ("type", "loc", "msg", "input")} for e in exc.errors()[:MAX_ERRORS]
        ]
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        status, where, message = explain(exc, first, request.headers.get("content-type"))
        count(request, "validation_error")
        return JSONResponse(error_body(status, "validation_error", message, where, errors), status_code=status)

    async def http(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "the request body is not valid JSON (or not UTF-8)"
        count(request, "http_error")
        return JSONResponse(
            error_body(exc.status_code, "http_error", message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def unexpected(request: Any, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        count(request, "internal_error")
        return JSONResponse(error_body(500, "internal_error", f"internal error: {type(exc).__name__}"), status_code=500)

    app.add_exception_handler(RankserveError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, unexpected)


def explain(exc: Any, first: dict, content_type: str | None) -> tuple[int, str, str]:
    """(status, param, message) for a request pydantic refused, phrased for the mistakes clients
    really make: broken JSON (400, with line and column), JSON sent without a JSON Content-Type
    (415: FastAPI then hands the raw bytes to validation, and 'Input should be a valid dictionary'
    says nothing useful), a body that is not an object, and strings where ``{"text": ...}``
    objects go (NIM's ranking shape). Anything else: 422 with pydantic's message at its field."""
    loc = [p for p in first.get("loc", ()) if p != "body"]
    where = ".".join(str(p) for p in loc) or "body"
    if first.get("type") == "json_invalid":  # loc holds a character offset: say line and column
        return 400, "body", json_syntax_message(exc, first)
    value = first.get("input")
    if not loc and isinstance(value, (bytes, bytearray)):
        got = content_type.split(";")[0].strip() if content_type else "none"
        return (
            415,
            "body",
            (
                "the body must be JSON sent with the header 'Content-Type: application/json' "
                f"(this request's Content-Type: {got}); with curl, add -H 'Content-Type: application/json'"
            ),
        )
    if first.get("type") in OBJECT_TYPES:
        if not loc:
            return VALIDATION_STATUS, "body", f"the body must be a JSON object, not {json_kind(value)}"
        field_name = next((p for p in reversed(loc) if isinstance(p, str)), "")
        if field_name in TEXT_OBJECTS and isinstance(value, str):
            return (
                VALIDATION_STATUS,
                where,
                (
                    f'{where}: expected an object like {{"text": "..."}}, got the string '
                    f'{safe_json(value)!r}; send {{"text": {json.dumps(safe_json(value))}}}'
                ),
            )
    return VALIDATION_STATUS, where, f"{where}: {first['msg']}"


def json_kind(value: Any) -> str:
    """'a list', 'a string', ... : what JSON value a client sent where an object goes."""
    for kind, name in (
        (list, "a list"),
        (str, "a string"),
        (bool, "a boolean"),
        (int, "a number"),
        (float, "a number"),
        (type(None), "null"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def json_syntax_message(exc: Any, error: dict) -> str:
    """'body is not valid JSON: <why> at line L, column C' from FastAPI's json_invalid error (its
    loc is ("body", offset); the exception keeps the document)."""
    raw = exc.errors()[0].get("ctx", {}).get("error") if exc.errors() else None
    doc = getattr(exc, "body", None)
    pos = error["loc"][-1] if error.get("loc") else None
    if isinstance(doc, bytes):
        doc = doc.decode("utf-8", "replace")
    if not isinstance(doc, str) or not isinstance(pos, int):
        return "body is not valid JSON"
    line = doc.count("\n", 0, pos) + 1
    column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
    return f"body is not valid JSON: {raw or 'syntax error'} at line {line}, column {column}"
