"""OpenVINO on the CPU: the model's ONNX export (``onnx_runner.exported_model``) compiled by
OpenVINO's CPU plugin, in float32 or bfloat16.

Why a second ONNX backend: OpenVINO's CPU plugin (built on oneDNN) fuses attention, LayerNorm and
GELU into kernels that run natively in bf16 on AVX512-BF16 / AMX CPUs. On the man-page workload
(docs/benchmarks-int8.md, AVX512-BF16 host) its bf16 ran 2.17-2.49x our torch fp32 with top-5
agreement 0.983-1.000 on four models, where torch's mixed bf16 (``engine/backends/cpu_bf16.py``) ran
1.32-1.61x in the same runs: the gap is mostly attention at head_dim 32, which torch's CPU SDPA
kernel does not speed up in bf16. Its float32 runs the same graph exactly (within 1e-5 of torch)
and 1.14-1.37x faster.

Precision (``--dtype``): ``float32`` (also what ``auto`` picks, as the torch backend does: the
default never trades exactness for speed); ``bfloat16`` (OpenVINO's inference precision hint: its
plugin decides which ops stay in f32), the fast mode where the CPU multiplies bf16 natively. A bf16
score moves with what it was batched with (~1e-3); an f32 one by float rounding (1.5e-7 measured on
MiniLM-L6: docs/batch-invariance.md), where the torch backend's is exact.

The compiled model is cached by OpenVINO in ``$XDG_CACHE_HOME/rankserve/openvino`` (keyed by the
ONNX file, the precision and the CPU), so a restart skips the compile.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rankserve.config import cache_dir as rankserve_cache_dir
from rankserve.engine.backends.cpu import available_cores, bf16_native
from rankserve.engine.backends.onnx_graph import graph_inputs
from rankserve.engine.backends.onnx_runner import exported_model
from rankserve.engine.outputs import finish
from rankserve.engine.tokenize import Encoded
from rankserve.errors import ConfigError
from rankserve.models.recipes import RecipeChoice
from rankserve.models.spec import ModelSpec

log = logging.getLogger("rankserve")

HINTS = {"float32": "f32", "bfloat16": "bf16"}  # --dtype -> OpenVINO's INFERENCE_PRECISION_HINT


def choose_precision(dtype: str, capabilities: Sequence[str]) -> str:
    """``--dtype`` (auto | float32 | bfloat16) -> the precision to compile for; auto is float32,
    with a hint in the log where bf16 would be native (and about 2x faster)."""
    if dtype != "auto":
        return dtype
    native = bf16_native() and "BF16" in capabilities
    log.info(
        "cpu precision: float32 (openvino; auto keeps the exact path%s)",
        "; this CPU multiplies bf16 natively: --dtype bfloat16 is faster, with load-dependent scores" if native else "",
    )
    return "float32"


class OpenVinoRunner:
    """Same contract as TorchRunner: ``forward(items)`` -> [B] logits or [B, H] vectors, numpy float32."""

    def __init__(
        self,
        spec: ModelSpec,
        threads: int = 0,
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
        choice: RecipeChoice = RecipeChoice(),
    ):
        if importlib.util.find_spec("openvino") is None:
            raise ConfigError("backend openvino needs openvino installed: pip install 'rankserve[openvino]'")
        import openvino as ov

        if dtype not in ("auto", *HINTS):
            raise ConfigError(f"backend openvino runs in float32 or bfloat16, not {dtype}")
        self.spec = spec
        self.gemm: str | None = None
        # One infer request on one stream: a second pass would wait for the first (no express lane).
        self.concurrent = False
        self.path = exported_model(spec, "none", cache_dir, choice)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(rankserve_cache_dir("openvino"))})
        self.precision = choose_precision(dtype, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        started = time.perf_counter()
        # One stream, every core on it: the batcher hands the runner one batch at a time. No thread
        # pinning: the event loop and the tokenizer share these cores.
        self.model = core.compile_model(
            str(self.path),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": HINTS[self.precision],
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_NUM_THREADS": threads or available_cores(),
                "ENABLE_CPU_PINNING": False,
            },
        )
        log.info("openvino %s: compiled %s in %.2fs", ov.__version__, self.precision, time.perf_counter() - started)
        self.request = self.model.create_infer_request()
        self.inputs = [i.get_any_name() for i in self.model.inputs]

    def forward(self, items: Sequence[Encoded]) -> np.ndarray:
        """-> [B] logits (cross-encoder) or [B, H] vectors (embedder), numpy float32."""
        arrays = graph_inputs(items)
        result = self.request.infer({name: arrays[name] for name in self.inputs})
        return finish(self.spec, result[self.model.output(0)].copy())
