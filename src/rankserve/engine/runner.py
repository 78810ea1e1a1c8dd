"""The only place that knows device, dtype and backend: token ids in, float32 rows out.

Runs in the engine's single model thread. Builds the padded ``Batch`` and its packed view, moves
them to the device, and post-processes per model kind (logit / temperature, or L2-normalized vector).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from rankserve.engine.tokenize import Encoded
from rankserve.engine.types import Batch
from rankserve.models.loader import ModelSpec


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TorchRunner:
    def __init__(self, spec: ModelSpec, device: torch.device, threads: int = 0):
        self.spec = spec
        self.device = device
        if device.type == "cpu":
            torch.set_num_threads(threads or available_cores())

    @torch.inference_mode()
    def forward(self, items: Sequence[Encoded]) -> torch.Tensor:
        """-> [B] logits (cross-encoder) or [B, H] vectors (embedder), float32 on CPU."""
        with_types = items[0].type_ids is not None
        batch = Batch.from_sequences(
            [it.ids for it in items], [it.type_ids for it in items] if with_types else None, pad_id=self.spec.pad_id
        )
        out = self.spec.module(batch.packed().to(self.device)).float()
        if self.spec.kind == "cross-encoder":
            return (out[:, 0] / self.spec.temperature).cpu()
        if self.spec.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu()
