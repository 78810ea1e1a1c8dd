"""A bounded LRU of passage embeddings for bi-encoder ranking (RAG re-sends the same chunks)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


def text_key(text: str, *extra: Hashable) -> tuple:
    """Key by a digest, not the text itself, so the cache holds vectors, not megabytes of strings."""
    return (hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), *extra)


class EmbeddingCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple) -> tuple[np.ndarray, int] | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def put(self, key: tuple, vector: np.ndarray, tokens: int) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = (vector, tokens)
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)
