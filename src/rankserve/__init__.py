"""rankserve: a self-hosted reranking and embedding service with NVIDIA NIM-compatible APIs."""

__version__ = "0.1.0"
