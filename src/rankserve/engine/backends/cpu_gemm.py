"""Which library runs the fp32 linear layers on CPU: torch's default GEMM or oneDNN.

Why: torch's fp32 ``nn.Linear`` calls MKL's sgemm, and MKL takes a slower code path on CPUs that
are not Intel's. On an AMD EPYC with AVX-512 it ran MiniLM- and Llama-1B-shaped products at
180-214 GFLOP/s where oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile``
uses on CPU) and onnxruntime ran at 442-486 (``python bench/cpu_gemm.py``); on the AVX2-only EPYC
of earlier runs a oneDNN linear gave no gain. Which is faster depends on the CPU, so with
``--cpu-gemm auto`` (the default) the runner times both on the model's own widest layer at start
and keeps the faster (timed once per machine, then read from a cache: ``measured_rates``);
``torch`` and ``onednn`` force one.

Swapping keeps the modules' parameters and names (a class change, no copy), so checkpoints, the
loader and ONNX export are untouched: under export or tracing, or off CPU / float32, the layer
falls back to ``F.linear``. The two libraries round differently (|difference| ~1e-6 relative).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rankserve.config import CPU_GEMMS, cache_dir
from rankserve.engine.backends.cpu import cpu_description
from rankserve.errors import ConfigError

log = logging.getLogger("rankserve")

AUTO_MARGIN = 1.10  # oneDNN must be this much faster to be chosen: a tie keeps torch's own path


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def tracing() -> bool:
    """Inside torch.compile / torch.export / jit tracing (getattr: older torch lacks some of these)."""
    compiler = getattr(torch, "compiler", None)
    return (
        getattr(compiler, "is_compiling", lambda: False)()
        or getattr(compiler, "is_exporting", lambda: False)()
        or torch.jit.is_tracing()
    )


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# oneDNN builds (and caches) a kernel per input shape, and its per-shape allocations defeated
# malloc's reuse: under varied traffic (every batch a new number of packed tokens) a server's RSS
# grew 499 -> 1,000 MB in a 60 s soak, and a loop over 1,200 row counts, twice, from 233 MB to
# 5.1 GB. Rounding the rows up to a multiple of ROW_BUCKET bounds the shapes (64 for a 4,096-token
# budget): the same loop stays at 389 MB, and a 180 s soak levels off (465 -> 668 MB, -10 MB in
# its second half; docs/reliability.md). Cost: the padded rows and a copy, 2-5 % of a linear at
# 300-3,000 rows; end to end 2-7 % of a MiniLM cross-encoder pass (uniform / mixed lengths, on a
# host where oneDNN and MKL ran at par).
ROW_BUCKET = 64


def bucket_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of ROW_BUCKET (the row counts oneDNN products see)."""
    return -(-rows // ROW_BUCKET) * ROW_BUCKET


def bucketed(product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``product(x)`` for a row-wise oneDNN product, its rows padded up to a multiple of ROW_BUCKET."""
    rows = x.shape[0]
    padded = bucket_rows(rows)
    if x.dim() != 2 or padded == rows:
        return product(x)
    return product(F.pad(x, (0, 0, 0, padded - rows)))[:rows]


def at_least_rows(product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``product(x)`` for a row-wise product, with fewer than ROW_BUCKET rows padded up to ROW_BUCKET.

    Why (batch invariance): MKL's sgemm computes a row differently when the product has only a few
    rows (a 1-9 row product's rows were up to 3.4e-5 off the same rows in a 64-row one on the AVX2
    EPYC; from 10 rows up, every row count and thread count gave the same bits: ``bench/batch_invariance.py``).
    A classification head sees one row per sequence and a short request a few rows per layer, so
    without this a pair's logit would depend on how many others shared its batch."""
    rows = x.shape[0]
    if x.dim() != 2 or rows >= ROW_BUCKET:
        return product(x)
    return product(F.pad(x, (0, 0, 0, ROW_BUCKET - rows)))[:rows]


class TorchLinear(nn.Linear):
    """``nn.Linear`` on torch's default GEMM whose CPU float32 products never see fewer than
    ROW_BUCKET rows (``at_least_rows``); anything else takes ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32 and not tracing():
            return at_least_rows(lambda rows: F.linear(rows, self.weight, self.bias), x)
        return F.linear(x, self.weight, self.bias)


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose CPU float32 product runs in oneDNN; anything else takes ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32 and not tracing():
            return bucketed(lambda rows: onednn_linear(rows, self.weight, self.bias), x)
        return F.linear(x, self.weight, self.bias)


def gemm_rates(
    weight: torch.Tensor, rows: int | None = None, repeats: int = 5, kernels: tuple[str, ...] = ("torch", "onednn")
) -> dict[str, float]:
    """GFLOP/s of ``[rows, in] x weight^T`` with each of ``kernels`` (best of ``repeats``): torch's
    default fp32 GEMM, oneDNN's fp32 linear, and ``bf16`` (oneDNN's bfloat16 product, as
    ``cpu_bf16.Bf16Linear`` runs it). Default rows: ~1 GFLOP per product, 128-1024 rows, so that
    timing a large model's widest layer (Llama-8B: 14336 x 4096) adds well under a second to its start."""
    if rows is None:
        rows = max(128, min(1024, int(1e9 / (2 * weight.numel()))))
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
    xb, wb = x.bfloat16(), weight.bfloat16()
    runs = {
        "torch": lambda: F.linear(x, weight),
        "onednn": lambda: onednn_linear(x, weight, None),
        "bf16": lambda: F.linear(xb, wb),
    }
    rates = {}
    with torch.inference_mode():
        for name in kernels:
            fn = runs[name]
            fn()
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            rates[name] = 2 * rows * weight.numel() / best / 1e9
    return rates


def rates_cache_file() -> Path:
    return cache_dir("cpu-gemm-rates.json")


def machine_key(weight: torch.Tensor, kernels: tuple[str, ...]) -> str:
    """What a GEMM timing depends on: the CPU (model and feature flags), torch, threads, the shape."""
    raw = f"{cpu_description()}|{torch.__version__}|{torch.get_num_threads()}|{tuple(weight.shape)}|{kernels}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def measured_rates(weight: torch.Tensor, kernels: tuple[str, ...]) -> dict[str, float]:
    """``gemm_rates`` of ``weight``, timed once per machine and kept in ``rates_cache_file()``.

    Why: the timing is a sizeable part of a small model's start (0.13 s of ~2 s for MiniLM), and
    near-equal libraries flipped from start to start on timing noise. A cached answer makes the
    choice stable across restarts on one machine; a new CPU, torch, thread count or shape re-times.
    An unreadable or unwritable cache only costs the timing."""
    path = rates_cache_file()
    key = machine_key(weight, kernels)
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and isinstance(cached.get(key), dict):
            return {k: float(v) for k, v in cached[key].items()}
    except (OSError, ValueError):
        cached = {}
    rates = gemm_rates(weight, kernels=kernels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = rates
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached))
        tmp.replace(path)
    except OSError as exc:
        log.debug("cpu gemm: could not cache the timing in %s: %s", path, exc)
    return rates


def use_cpu_gemm(module: nn.Module, choice: str = "auto") -> str:
    """Route ``module``'s linear layers through the ``choice`` GEMM (auto: the faster one measured
    here, now); returns the one in use. Only for float32 modules on CPU; others stay as they are."""
    if choice not in CPU_GEMMS:
        raise ValueError(f"cpu_gemm={choice!r}: choose one of {CPU_GEMMS}")
    linears = [m for m in module.modules() if type(m) in (nn.Linear, TorchLinear, OneDnnLinear)]
    if not linears or linears[0].weight.device.type != "cpu" or linears[0].weight.dtype != torch.float32:
        return "torch"
    if choice == "auto":
        if not onednn_available():
            choice = "torch"
        else:
            widest = max(linears, key=lambda m: m.weight.numel()).weight
            rates = measured_rates(widest, ("torch", "onednn"))
            choice = "onednn" if rates["onednn"] >= AUTO_MARGIN * rates["torch"] else "torch"
            log.info(
                "cpu gemm: %s (oneDNN %.0f GFLOP/s, torch default %.0f GFLOP/s on a %s layer)",
                choice,
                rates["onednn"],
                rates["torch"],
                "x".join(map(str, widest.shape)),
            )
    elif choice == "onednn" and not onednn_available():
        raise ConfigError("cpu_gemm=onednn: this torch build has no oneDNN linear kernel; use auto or torch")
    for m in linears:
        m.__class__ = OneDnnLinear if choice == "onednn" else TorchLinear
    return choice
