"""The backends: the only code that knows devices, dtypes and runtimes.

Each backend turns encoded items into float32 numpy rows behind the one ``Runner`` protocol, so
the engine, batcher and routes never branch on torch, onnxruntime or OpenVINO. ``make_runner`` picks
one from the configuration; the runtimes are imported only when chosen (onnxruntime and openvino
are optional, and a cached ONNX export starts without torch).

- ``torch_runner.py``: the torch modules in ``models/``, CPU or CUDA; with ``cpu_gemm.py`` (which
  CPU library runs fp32 products), ``cpu_bf16.py`` (opt-in mixed bf16) and ``malloc.py``;
- ``onnx_export.py`` / ``onnx_graph.py``: the export both ONNX backends load, and its cache;
- ``onnx_runner.py``, ``openvino_runner.py``: the runtimes over that export;
- ``cpu.py``: cores and CPU flags, read without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rankserve.errors import ConfigError
from rankserve.models.recipes import RecipeChoice
from rankserve.models.spec import ModelSpec

if TYPE_CHECKING:
    from rankserve.config import ServerConfig
    from rankserve.engine.tokenize import Encoded

ONNX_BACKENDS = ("onnxruntime", "openvino")  # run a cached ONNX export; start without torch


class Runner(Protocol):
    """What the engine needs of a backend."""

    spec: ModelSpec
    precision: str  # what the layers compute in: float32, bfloat16, float16, int8
    gemm: str | None  # the CPU library of the fp32 products (torch backend on CPU), else None
    concurrent: bool  # forward may run from two threads at once (the batcher's express lane)

    def forward(self, items: Sequence[Encoded]) -> np.ndarray:
        """-> [B] logits (cross-encoder) or [B, H] vectors (embedder), float32."""
        ...


class ExportRunner(Runner, Protocol):
    """A backend over an ONNX export (``rankserve export`` prints where it lives)."""

    path: Path


def recipe_choice(config: ServerConfig) -> RecipeChoice:
    return RecipeChoice(config.recipe, config.instruction, config.score_tokens, config.rerank_template)


def refuse_images_on_onnx(spec: ModelSpec, backend: str) -> None:
    """The ONNX backends export text models only: a VL model is refused before any export starts."""
    if backend in ONNX_BACKENDS and spec.vision is not None:
        raise ConfigError(
            f"backend {backend} exports text models only; {spec.architecture} (image passages) runs on backend torch"
        )


def make_runner(spec: ModelSpec, device: str, config: ServerConfig) -> Runner:
    """The runner ``config.backend`` names."""
    refuse_images_on_onnx(spec, config.backend)
    if config.backend == "onnxruntime":
        from rankserve.engine.backends.onnx_runner import OnnxRunner

        return OnnxRunner(spec, threads=config.threads, quantize=config.quantize, choice=recipe_choice(config))
    if config.backend == "openvino":
        from rankserve.engine.backends.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(spec, threads=config.threads, dtype=config.dtype, choice=recipe_choice(config))
    import torch

    from rankserve.engine.backends.torch_runner import TorchRunner

    return TorchRunner(spec, torch.device(device), config.threads, config.cpu_gemm, config.dtype)
