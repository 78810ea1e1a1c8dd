"""The torch backend: token ids in, float32 numpy rows out; the only place that knows device and dtype.

Runs in the engine's single model thread. Builds the padded ``Batch`` and its packed view, moves
them to the device, runs the module and post-processes per model kind (``outputs.finish``: logit /
temperature, or L2-normalized vector). The ONNX backends (onnx_runner.py, openvino_runner.py) build
the same packed inputs in numpy, without torch; ``engine.make_runner`` picks the backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

import rankserve.engine.backends.cpu_bf16 as cpu_bf16
from rankserve.engine.backends.cpu import available_cores
from rankserve.engine.backends.cpu_gemm import use_cpu_gemm
from rankserve.engine.backends.malloc import PeriodicTrim, retain_freed_memory
from rankserve.engine.outputs import finish
from rankserve.engine.tokenize import Encoded
from rankserve.models.batch import Batch, Packed
from rankserve.models.spec import ModelSpec


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Attention on CPU: every sequence on its own [1, length] grid (Batch.packed(alone=True)), so that
# with cpu_gemm.at_least_rows a sequence's score never depends on its batch-mates (batch
# invariance). A GPU keeps one grid per batch (one kernel launch; padding is cheap there).
def packed_batch(spec: ModelSpec, items: Sequence[Encoded], group_ratio: float = 0.0, alone: bool = False) -> Packed:
    """Encoded items -> the padded batch's packed view (on CPU), attention grouped at ``group_ratio``
    or per sequence (``alone``)."""
    with_types = items[0].type_ids is not None
    batch = Batch.from_sequences(
        [it.ids for it in items], [it.type_ids or [] for it in items] if with_types else None, pad_id=spec.pad_id
    )
    packed = batch.packed(group_ratio, alone)
    images = [it.pixels for it in items if it.pixels is not None]
    return dataclasses.replace(packed, images=torch.cat(images)) if images else packed


class TorchRunner:
    def __init__(
        self, spec: ModelSpec, device: torch.device, threads: int = 0, cpu_gemm: str = "auto", dtype: str = "auto"
    ):
        if spec.module is None:
            raise ValueError("the torch backend needs the spec's module (a cached export's spec has none)")
        self.spec = spec
        self.module = spec.module
        self.device = device
        self.gemm: str | None = None  # the CPU GEMM library for fp32 products (see engine/backends/cpu_gemm.py)
        self.alone = device.type == "cpu"  # per-sequence attention: batch-invariant scores
        # forward may run from two threads at once (the batcher's express lane). Not on CUDA: a
        # second pass beside a 65k-token one would double the activation memory, and the GPU
        # serializes the kernels of one stream anyway.
        self.concurrent = device.type == "cpu"
        self.trim: PeriodicTrim | None = None
        # What the layers compute in: the module's dtype, or on CPU float32 / bfloat16 (mixed,
        # engine/backends/cpu_bf16.py); --dtype auto is float32 (batch-invariant scores).
        self.precision = str(next(self.module.parameters()).dtype).removeprefix("torch.")
        if device.type == "cpu":
            torch.set_num_threads(threads or available_cores())
            retain_freed_memory()
            self.trim = PeriodicTrim()
            self.gemm = use_cpu_gemm(self.module, cpu_gemm)  # after set_num_threads: auto times both
            if self.precision == "float32":
                self.precision = cpu_bf16.choose(self.module, dtype)
                if self.precision == "bfloat16":
                    cpu_bf16.use_bf16(self.module)

    @torch.inference_mode()
    def forward(self, items: Sequence[Encoded]) -> np.ndarray:
        """-> [B] logits (cross-encoder) or [B, H] vectors (embedder), numpy float32."""
        packed = packed_batch(self.spec, items, alone=self.alone)
        out = finish(self.spec, self.module(packed.to(self.device)).float().cpu().numpy())
        if self.trim is not None:
            self.trim()
        return out
