"""A forward pass's output -> what the engine hands on: numpy float32, the same for every backend.

Numpy, not torch, so that the engine, the batcher and the routes run without torch: the ONNX Runtime
and OpenVINO backends then start without importing it (engine/backends/onnx_runner.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rankserve.models.spec import ModelSpec

EPS = 1e-12  # as torch.nn.functional.normalize: a zero row stays zero


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to unit length, float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = x / np.maximum(norm, np.float32(EPS))
    return out


def finish(spec: ModelSpec, out: np.ndarray) -> np.ndarray:
    """Model output -> [B] logits / temperature (cross-encoder) or [B, H] vectors (L2-normalized
    when the model says so), float32."""
    out = np.asarray(out, dtype=np.float32)
    if spec.kind == "cross-encoder":
        return out[:, 0] / np.float32(spec.temperature)
    return l2_normalize(out) if spec.normalize else out
