"""The embedder and reranker the evaluation measures: in-process rankserve engines or any
NIM-compatible HTTP server (rankserve, a remote rankserve, or an NVIDIA NIM), behind one interface.

    embedder.embed(texts, input_type) -> np.ndarray [n, d] float32
    reranker.rerank(query, passages)  -> list[float] (one score per passage, request order)
    .identity                         -> a string naming the model, for the embedding cache key

Both are async; requests are sent in batches with a few in flight and always ``truncate: END``
(evaluation texts are whole man pages: longer than any model's window).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    identity: str

    async def embed(self, texts: Sequence[str], input_type: str) -> np.ndarray: ...


class Reranker(Protocol):
    identity: str

    async def rerank(self, query: str, passages: Sequence[str]) -> list[float]: ...


def model_fingerprint(directory: Path) -> str:
    """Folder path + name, size and mtime of each file: changes when the weights change, costs no reads."""
    h = hashlib.sha256(str(directory.resolve()).encode())
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(directory)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# -- in-process -------------------------------------------------------------------------------


class LocalEngine:
    """One rankserve Engine in this process (serves as embedder, reranker, or both)."""

    # Rerank one query at a time: the engine batches a query's 100-200 passages itself, and two
    # queries in flight on a bi-encoder would both embed the passages its cache does not hold yet.
    rerank_concurrency = 1
    rerank_truncate = "END"  # or CHUNK (rankserve eval --rerank-truncate)

    def __init__(self, engine, directory: Path):
        self.engine = engine
        self.identity = f"local:{engine.spec.family}:{engine.spec.kind}:{model_fingerprint(directory)}"

    @classmethod
    async def open(cls, model: str | None) -> LocalEngine:
        from rankserve.config import load_config
        from rankserve.engine.engine import Engine
        from rankserve.metrics import Metrics

        # float32: the evaluation measures the model, the same on every CPU (auto may pick mixed bf16)
        config = load_config({"model": model, "warmup": False, "dtype": "float32"})
        engine = await asyncio.to_thread(Engine.load, config, Metrics())
        await engine.start()
        return cls(engine, engine.source.path)  # a Hub repo id was fetched by Engine.load

    @property
    def kind(self) -> str:
        return self.engine.spec.kind

    async def embed(self, texts: Sequence[str], input_type: str) -> np.ndarray:
        input_type = input_type if self.engine.asymmetric else None
        result = await self.engine.embed(list(texts), input_type, "END")
        return result.vectors

    async def rerank(self, query: str, passages: Sequence[str]) -> list[float]:
        return (await self.engine.rank(query, list(passages), self.rerank_truncate)).scores

    async def close(self) -> None:
        await self.engine.stop()


# -- HTTP (NIM API) ---------------------------------------------------------------------------


def base_url(url: str) -> str:
    """Accept ``http://host:8000``, ``.../v1`` or a full ``.../v1/ranking`` / ``.../v1/embeddings`` URL."""
    url = url.rstrip("/")
    for suffix in ("/ranking", "/reranking", "/embeddings"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url[:-3] if url.endswith("/v1") else url


class HttpClient:
    """POST /v1/embeddings and /v1/ranking on a NIM-compatible server."""

    rerank_truncate = "END"  # or CHUNK (a rankserve server; NIM itself knows only NONE / END)

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 300.0):
        import httpx

        self.base = base_url(url)
        api_key = api_key if api_key is not None else os.environ.get("NVIDIA_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=timeout)
        self.model = model
        self.identity = f"http:{self.base}:{model}"

    async def open(self) -> HttpClient:
        """Ask /v1/models for the model id when none was given (NIM needs ``model`` in requests)."""
        if self.model is None:
            response = await self._call("GET", "/v1/models")
            data = response.json().get("data") or []
            if not data:
                raise RuntimeError(f"{self.base}/v1/models lists no model; pass the model id explicitly")
            self.model = data[0]["id"]
            self.identity = f"http:{self.base}:{self.model}"
        return self

    async def _call(self, method: str, path: str, body: dict | None = None):
        """One request; transport failures and non-200 answers become a RuntimeError naming the URL."""
        import httpx

        try:
            response = await self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{self.base}{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise RuntimeError(f"{self.base}{path} answered HTTP {response.status_code}: {response.text[:500]}")
        return response

    async def embed(self, texts: Sequence[str], input_type: str) -> np.ndarray:
        body = {
            "model": self.model,
            "input": list(texts),
            "input_type": input_type,
            "truncate": "END",
            "encoding_format": "float",
        }
        response = await self._call("POST", "/v1/embeddings", body)
        rows = sorted(response.json()["data"], key=lambda r: r["index"])
        return np.asarray([r["embedding"] for r in rows], dtype=np.float32)

    async def rerank(self, query: str, passages: Sequence[str]) -> list[float]:
        body = {
            "model": self.model,
            "query": {"text": query},
            "passages": [{"text": p} for p in passages],
            "truncate": self.rerank_truncate,
        }
        response = await self._call("POST", "/v1/ranking", body)
        scores = [float("nan")] * len(passages)
        for r in response.json()["rankings"]:
            scores[r["index"]] = float(r["logit"])
        if any(s != s for s in scores):
            raise RuntimeError("/v1/ranking did not return a score for every passage")
        return scores

    async def close(self) -> None:
        await self.http.aclose()


async def open_clients(
    model: str | None,
    reranker: str | None,
    embed_url: str | None,
    rerank_url: str | None,
    embed_model: str | None = None,
    rerank_model: str | None = None,
    api_key: str | None = None,
    rerank_truncate: str = "END",
) -> tuple[Embedder, Reranker, list]:
    """Build the embedder and the reranker; returns them and the things to close.

    In-process, an embedder and a reranker on the same model folder share one engine (with the
    default all-MiniLM-L6-v2, "rerank" is then cosine re-scoring by the embedder itself).
    """
    opened: list = []
    local: dict[str | None, LocalEngine] = {}

    async def engine(path: str | None) -> LocalEngine:
        key = str(Path(path).resolve()) if path else None
        if key not in local:
            local[key] = await LocalEngine.open(path)
            opened.append(local[key])
        return local[key]

    try:
        if embed_url:
            embedder = HttpClient(embed_url, embed_model, api_key)
            opened.append(embedder)
            await embedder.open()
        else:
            embedder = await engine(model)
            if embedder.kind != "embedder":
                raise ValueError(f"--model {model}: a cross-encoder cannot embed; pass an embedding model")
        if rerank_url:
            rer = HttpClient(rerank_url, rerank_model, api_key)
            opened.append(rer)
            await rer.open()
        else:
            rer = await engine(reranker if reranker else model)
        rer.rerank_truncate = rerank_truncate
    except BaseException:
        for c in opened:
            await c.close()
        raise
    return embedder, rer, opened
