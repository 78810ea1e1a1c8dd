"""rankserve: a self-hosted reranking and embedding service with NVIDIA NIM-compatible APIs."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "ClientError", "Ranking", "__version__"]


def __getattr__(name: str) -> Any:
    """``from rankserve import Client`` without importing httpx for ``rankserve serve`` (start time)."""
    if name in ("AsyncClient", "Client", "ClientError", "Ranking"):
        from rankserve import client

        return getattr(client, name)
    raise AttributeError(f"module 'rankserve' has no attribute {name!r}")
