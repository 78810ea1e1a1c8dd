"""Python client for a rankserve (or any NIM-compatible) server: ``Client`` and ``AsyncClient``.

    from rankserve import Client
    with Client("http://127.0.0.1:8000") as c:
        for r in c.rank("how do I list files", ["ls lists directory contents", "bananas"]):
            print(r.index, r.logit, r.text)

Both speak ``/v1/ranking``, ``/v1/embeddings``, ``/v1/models`` and the health routes over ``httpx``,
raise ``ClientError`` (the server's status and error message) for any error answer, and retry a
503 (not ready, full, draining) up to ``retries`` times, waiting what ``Retry-After`` says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

MAX_RETRY_WAIT = 30.0  # seconds: a Retry-After beyond this is capped


@dataclass(frozen=True)
class Ranking:
    index: int  # the passage's position in the request
    logit: float
    text: str


class ClientError(Exception):
    """An error answer: ``status`` (HTTP), ``message``, and the body's ``type`` and ``param``."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.type, self.param = status, message, type_, param


def _error(response: httpx.Response) -> ClientError:
    try:
        body = response.json().get("error") or {}
    except (ValueError, AttributeError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return ClientError(
        response.status_code,
        message or response.text[:500] or response.reason_phrase,
        body.get("type") if isinstance(body, dict) else None,
        body.get("param") if isinstance(body, dict) else None,
    )


def _retry_wait(response: httpx.Response, attempt: int) -> float:
    try:
        return min(MAX_RETRY_WAIT, max(0.0, float(response.headers.get("retry-after", ""))))
    except ValueError:
        return min(MAX_RETRY_WAIT, 0.5 * 2**attempt)


def _rank_body(query: str, passages: Sequence[str], model: str | None, top_n: int | None, truncate: str) -> dict:
    body: dict[str, Any] = {"query": {"text": query}, "passages": [{"text": p} for p in passages], "truncate": truncate}
    if model is not None:
        body["model"] = model
    if top_n is not None:
        body["top_n"] = top_n
    return body


def _rankings(data: dict, passages: Sequence[str]) -> list[Ranking]:
    return [Ranking(r["index"], r["logit"], passages[r["index"]]) for r in data["rankings"]]


def _embed_body(
    texts: str | Sequence[str], input_type: str | None, dimensions: int | None, model: str | None, truncate: str
) -> dict:
    body: dict[str, Any] = {
        "input": [texts] if isinstance(texts, str) else list(texts),
        "encoding_format": "float",
        "truncate": truncate,
    }
    for key, value in (("input_type", input_type), ("dimensions", dimensions), ("model", model)):
        if value is not None:
            body[key] = value
    return body


def _vectors(data: dict) -> list[list[float]]:
    return [d["embedding"] for d in sorted(data["data"], key=lambda d: d["index"])]


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """Blocking client. ``retries``: how many times a 503 is retried (0 = never)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ):
        self.retries = retries
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(self.retries + 1):
            response = self._http.request(method, path, json=body)
            if response.status_code == 503 and attempt < self.retries:
                time.sleep(_retry_wait(response, attempt))
                continue
            if response.is_error:
                raise _error(response)
            return response.json()
        raise AssertionError("unreachable")

    def rank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        model: str | None = None,
        top_n: int | None = None,
        truncate: Literal["NONE", "END"] = "END",
    ) -> list[Ranking]:
        """Passages best first (``top_n`` of them if given)."""
        return _rankings(
            self._call("POST", "/v1/ranking", _rank_body(query, passages, model, top_n, truncate)), passages
        )

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        input_type: Literal["query", "passage"] | None = None,
        dimensions: int | None = None,
        model: str | None = None,
        truncate: Literal["NONE", "START", "END"] = "END",
    ) -> list[list[float]]:
        return _vectors(
            self._call("POST", "/v1/embeddings", _embed_body(texts, input_type, dimensions, model, truncate))
        )

    def models(self) -> list[str]:
        return [m["id"] for m in self._call("GET", "/v1/models")["data"]]

    def health(self) -> dict:
        """``/v1/health/ready``'s body (``status``: ready, not_ready, draining or failed); never raises
        for a 503, which is an answer here."""
        return self._http.get("/v1/health/ready").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same API for asyncio: ``await client.rank(...)``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(self.retries + 1):
            response = await self._http.request(method, path, json=body)
            if response.status_code == 503 and attempt < self.retries:
                await asyncio.sleep(_retry_wait(response, attempt))
                continue
            if response.is_error:
                raise _error(response)
            return response.json()
        raise AssertionError("unreachable")

    async def rank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        model: str | None = None,
        top_n: int | None = None,
        truncate: Literal["NONE", "END"] = "END",
    ) -> list[Ranking]:
        data = await self._call("POST", "/v1/ranking", _rank_body(query, passages, model, top_n, truncate))
        return _rankings(data, passages)

    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        input_type: Literal["query", "passage"] | None = None,
        dimensions: int | None = None,
        model: str | None = None,
        truncate: Literal["NONE", "START", "END"] = "END",
    ) -> list[list[float]]:
        return _vectors(
            await self._call("POST", "/v1/embeddings", _embed_body(texts, input_type, dimensions, model, truncate))
        )

    async def models(self) -> list[str]:
        return [m["id"] for m in (await self._call("GET", "/v1/models"))["data"]]

    async def health(self) -> dict:
        return (await self._http.get("/v1/health/ready")).json()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
