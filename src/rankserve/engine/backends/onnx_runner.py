"""ONNX Runtime on the CPU: the loaded model exported once to ONNX, fp32 or dynamic int8, cached on disk.

This module does not import torch: with the export cached, ``--backend onnxruntime`` (and
``openvino``, which compiles the same file) starts without it, the spec read back from the
``spec.json`` saved with the graph (``cached_spec``). Only a first start exports, through
``onnx_export.py`` (torch, imported then). The graph's inputs are the packed batch, built in numpy
(``onnx_graph.graph_inputs``), the same tensors the torch models read from ``Packed``.

The exported file lives in ``$XDG_CACHE_HOME/rankserve/onnx/<key>/`` (``~/.cache`` by default),
keyed by the model folder's files (name, size, mtime of its weights and JSON files, subfolders
included), the quantization, the recipe choice (a yes/no reranker's head is built from its score
tokens), the model source code and the torch / onnx / onnxruntime versions; a changed checkpoint,
recipe or upgrade exports anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from rankserve.config import cache_dir as rankserve_cache_dir
from rankserve.engine.backends.cpu import available_cores
from rankserve.engine.backends.onnx_graph import graph_inputs
from rankserve.engine.outputs import finish
from rankserve.engine.tokenize import Encoded
from rankserve.errors import ConfigError, ModelLoadError
from rankserve.models.recipes import RecipeChoice
from rankserve.models.spec import ModelSpec, from_json

log = logging.getLogger("rankserve")

QUANTIZE = ("none", "int8")
FORMAT = 2  # bump when the exported folder's layout changes (2: spec.json beside model.onnx)


def default_cache_dir() -> Path:
    return rankserve_cache_dir("onnx")


def tool_versions() -> str:
    """The exporter's, quantizer's and runtime's versions, read from package metadata (importing
    them would cost the start-up this module exists to save)."""

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return "|".join(f"{n}={of(n)}" for n in ("torch", "onnx", "onnxscript", "onnxruntime"))


def cache_key(directory: Path, quantize: str, choice: RecipeChoice = RecipeChoice()) -> str:
    """What an exported folder depends on: the model folder's files, quantization, the recipe
    choice, the model code and the tool versions."""
    h = hashlib.sha256()
    directory = directory.resolve()
    h.update(f"{FORMAT}|{quantize}|{directory}|{choice!r}|{tool_versions()}|".encode())
    for path in sorted(directory.rglob("*")):
        if path.suffix in (".safetensors", ".json") and path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(directory)}:{st.st_size}:{st.st_mtime_ns}|".encode())
    package = Path(__file__).resolve().parents[2]  # rankserve/ (this file: engine/backends/)
    sources = sorted((package / "models").glob("*.py")) + [
        Path(__file__).with_name(name) for name in ("onnx_graph.py", "onnx_export.py")
    ]
    for source in sources:
        h.update(source.read_bytes())
    return h.hexdigest()[:20]


def export_folder(
    directory: Path, quantize: str, choice: RecipeChoice = RecipeChoice(), cache_dir: str | Path | None = None
) -> Path:
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize={quantize!r}: choose one of {QUANTIZE}")
    return Path(cache_dir or default_cache_dir()) / cache_key(directory, quantize, choice)


def cached_spec(
    directory: Path, quantize: str = "none", choice: RecipeChoice = RecipeChoice(), cache_dir: str | Path | None = None
) -> ModelSpec | None:
    """The spec saved with ``directory``'s cached export (no module, no operator flags applied),
    None when there is no complete export yet."""
    folder = export_folder(directory, quantize, choice, cache_dir)
    if not ((folder / "model.onnx").is_file() and (folder / "spec.json").is_file()):
        return None
    spec = from_json((folder / "spec.json").read_text(encoding="utf-8"))
    # The tokenizer is read from the folder as named now (the saved path may be relative to another cwd).
    return dataclasses.replace(spec, tokenizer_file=Path(directory) / spec.tokenizer_file.name)


def exported_model(
    spec: ModelSpec, quantize: str = "none", cache_dir: str | Path | None = None, choice: RecipeChoice = RecipeChoice()
) -> Path:
    """The cached ONNX file for ``spec`` as loaded with ``choice`` (exported, and quantized, on
    first use, with ``spec`` saved beside it: pass it before operator flags are applied)."""
    folder = export_folder(spec.tokenizer_file.parent, quantize, choice, cache_dir)
    final = folder / "model.onnx"
    if final.is_file():
        return final
    if spec.module is None:
        raise ModelLoadError(f"the cached export {folder} is gone and this spec has no module to export again: restart")
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"exporting the model to ONNX needs {', '.join(missing)} installed: "
            "pip install 'rankserve[onnx]' (or '[openvino]')"
        )
    from rankserve.engine.backends.onnx_export import export  # torch: only a first start exports

    export(spec, folder, quantize)
    return final


def session_options(threads: int = 0) -> Any:
    """How every ONNX Runtime session here is set up (the server's and the benchmarks'): all graph
    optimizations, ``threads`` (0: every core) on one sequential stream, errors-only logging."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    return options


class OnnxRunner:
    """Same contract as TorchRunner: ``forward(items)`` -> [B] logits or [B, H] vectors, numpy float32."""

    def __init__(
        self,
        spec: ModelSpec,
        threads: int = 0,
        quantize: str = "none",
        cache_dir: str | Path | None = None,
        choice: RecipeChoice = RecipeChoice(),
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError(
                f"backend onnxruntime needs onnxruntime installed: pip install 'rankserve[onnx]' ({exc})"
            ) from exc
        self.spec = spec
        self.quantize = quantize
        self.precision = "int8" if quantize == "int8" else "float32"  # as TorchRunner reports its own
        self.gemm: str | None = None
        self.concurrent = True  # InferenceSession.run is thread-safe (the batcher's express lane)
        self.path = exported_model(spec, quantize, cache_dir, choice)
        self.session = ort.InferenceSession(
            str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def forward(self, items: Sequence[Encoded]) -> np.ndarray:
        """-> [B] logits (cross-encoder) or [B, H] vectors (embedder), numpy float32."""
        arrays = graph_inputs(items)
        (out,) = self.session.run(["out"], {name: arrays[name] for name in self.inputs})
        return finish(self.spec, out)
