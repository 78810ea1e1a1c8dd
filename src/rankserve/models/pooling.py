"""Pooling of packed hidden states into one vector per sequence.

Pooling is configuration (``cls`` | ``mean`` | ``last``), chosen once by the loader; models call
``pool`` and never branch on it themselves. Works on the packed layout, so padding never enters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankserve.models.batch import Packed

POOLING_ALIASES = {"avg": "mean", "mean": "mean", "cls": "cls", "first": "cls", "last": "last", "eos": "last"}


def normalize_pooling(name: str) -> str:
    try:
        return POOLING_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; supported: {sorted(set(POOLING_ALIASES))}") from None


def pool(hidden: torch.Tensor, packed: Packed, mode: str) -> torch.Tensor:
    """hidden [N, H] -> [B, H]. Mean is accumulated in float32 for stability under bf16."""
    if mode == "cls":
        return hidden[packed.cu_seqlens[:-1]]
    if mode == "last":
        return hidden[packed.cu_seqlens[1:] - 1]
    if mode == "mean":
        # Summed on the padded grid (zeros at padding), not with index_add_: exported to ONNX, an
        # index_add_ becomes a scatter-add that onnxruntime's CPU kernel ran non-deterministically
        # (the same padded batch gave vectors 1e-2 apart from one run to the next).
        sums = packed.pad(hidden.float()).sum(dim=1)  # [B, H]
        return (sums / packed.lengths.to(sums.dtype).unsqueeze(1)).to(hidden.dtype)
    raise ValueError(f"unknown pooling mode {mode!r}")


class PooledEncoder(nn.Module):
    """An embedder: any encoder stack (Packed -> [N, H]) under ``model`` (the checkpoint's key
    prefix), pooled to [B, H], unnormalized (the runner L2-normalizes). Shared by every family."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, p: Packed) -> torch.Tensor:
        return pool(self.model(p), p, self.pooling)


def encoder_embedder(directory: Path, encoder: nn.Module, limits: list[int | None]) -> dict[str, Any]:
    """ModelSpec fields of an encoder served as an embedder: pooling, normalization and length from
    the folder's sentence-transformers files (mean pooling, normalized, when it has none)."""
    from rankserve.models.model_dir import st_embedder

    st = st_embedder(directory)
    pooling, normalize, st_max = st if st else ("mean", True, None)
    return dict(
        module=PooledEncoder(encoder, pooling),
        kind="embedder",
        pooling=pooling,
        normalize=normalize,
        max_length=min(x for x in [*limits, st_max] if x),
    )
