"""Shared benchmark pieces: the models measured, the workloads, the matmul peak, FLOP counting.

Benchmarks print ratios against peers measured in the same process run (the machine is shared
and noisy; absolute numbers drift between runs, ratios much less).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rankserve.models.model_dir import default_model_dir

WORDS = (
    "the of and to in is for that with as on by this be are from or an it at which can not file "
    "directory command option list output input process system user memory kernel time data value "
    "string number return error function call signal socket network address page print format line "
    "read write open close set get default mode flag path name size buffer device access control "
    "search pattern match sort count compress archive extract copy move remove create display show"
).split()


def cpu_line() -> str:
    """The CPU model and the SIMD kinds that decide its speed (AVX2 / AVX-512 / VNNI / bf16 / AMX)."""
    from rankserve.engine.backends.cpu import cpu_description

    model, _, flags = cpu_description().partition("|")
    kinds = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags.split()]
    return f"{model} ({' '.join(kinds)})"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rankserve_cmd(port: int, *flags: str) -> list[str]:
    """``rankserve serve`` on 127.0.0.1:``port`` with quiet logs, as a command line for ``start_server``."""
    return [
        sys.executable,
        "-m",
        "rankserve.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *flags,
    ]


def start_server(cmd: list[str], port: int, env: dict | None = None, timeout: float = 300) -> subprocess.Popen:
    """Start a server process (its own process group) and wait until ``/v1/health/ready`` answers 200."""
    import httpx

    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {cmd}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise TimeoutError(f"{cmd} did not become ready within {timeout:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (workers too); SIGKILL after 60 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def minilm_cross_encoder(directory: Path, seed: int = 0) -> Path:
    """A MiniLM-L6-size cross-encoder (the shape of ms-marco-MiniLM-L-6-v2): the real MiniLM
    encoder weights plus a seeded random one-logit head. Speed does not depend on head values."""
    from transformers import BertConfig, BertForSequenceClassification

    if (directory / "model.safetensors").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    src = default_model_dir()
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(architectures=["BertForSequenceClassification"], num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**cfg))
    from safetensors.torch import load_file

    missing = model.bert.load_state_dict(load_file(str(src / "model.safetensors")), strict=False)
    assert not [k for k in missing.missing_keys if "pooler" not in k], missing
    model.eval().save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, directory / name)
    return directory


def base_cross_encoder(directory: Path, seed: int = 0) -> Path:
    """A base-size BERT cross-encoder (12 layers, 768 wide: the shape of ms-marco-MiniLM-L-12's
    bigger cousins and bge-reranker-base's encoder), random weights, the packaged MiniLM's
    tokenizer. Speed depends on the shape only; agreement figures on it are crowded random scores."""
    from transformers import BertConfig, BertForSequenceClassification

    if (directory / "model.safetensors").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    src = default_model_dir()
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(
        architectures=["BertForSequenceClassification"],
        num_labels=1,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(BertConfig(**cfg)).eval().save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, directory / name)
    return directory


def engine_offline(
    model_dir: Path, work: list[tuple[str, list[str]]], overrides: dict, rounds: int = 2
) -> tuple[float, list[float]]:
    """Best seconds and the scores (request order) of rankserve's Engine given every request of
    ``work`` at once, config ``overrides`` on the server's defaults, in a child process so the
    caller keeps torch's and glibc's defaults."""
    code = """
import asyncio, json, sys, time
from rankserve.config import load_config
from rankserve.engine.engine import Engine
from rankserve.metrics import Metrics
args = json.load(sys.stdin)
work = args["work"]
async def main():
    config = load_config({"model": args["model"], "cache_size": 0, **args["overrides"]}, environ={})
    engine = Engine.load(config, Metrics())
    await engine.start()
    best, scores = float("inf"), []
    for _ in range(args["rounds"]):
        t = time.perf_counter()
        results = await asyncio.gather(*(engine.rank(q, ps, "END") for q, ps in work))
        best = min(best, time.perf_counter() - t)
        scores = [float(s) for r in results for s in r.scores]
    await engine.stop()
    print(json.dumps({"seconds": best, "scores": scores}))
asyncio.run(main())
"""
    payload = json.dumps({"model": str(model_dir), "work": work, "overrides": overrides, "rounds": rounds})
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["scores"]


def text_of(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` WordPiece tokens of English-like text (each word here is one token)."""
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def workload(kind: str, n_queries: int, per_query: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """uniform: every pair 256 tokens; mixed: passage lengths spread 16..512 (log-uniform)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_queries):
        query = text_of(rng.randint(6, 12), rng)
        if kind == "uniform":
            passages = [text_of(256 - 3 - len(query.split()), rng) for _ in range(per_query)]
        else:
            passages = [text_of(int(16 * 32 ** rng.random()) - 3 - len(query.split()), rng) for _ in range(per_query)]
        out.append((query, passages))
    return out


def manpage_workload(n_queries: int, per_query: int, pages: int = 300, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Real text: English man-page NAME-line queries, each with its BM25 top-``per_query`` passages
    (~250-token chunks of rendered pages) as the candidates a reranker gets in a real pipeline.
    Built with `rankserve data manpages` (needs Debian's ``manpages`` package); cached in /tmp."""
    from rankserve.eval import beir, manpages
    from rankserve.eval.retrieval import bm25_search, tokenize

    out = Path(tempfile.gettempdir()) / f"rankserve-bench-manpages-{pages}-{seed}"
    if not (out / "manifest.json").exists():
        manpages.build(
            out,
            manpages.BuildOptions(
                langs=["en"], cross=[], granularity=["passages"], max_pages=pages, seed=seed, progress=False
            ),
        )
    data = beir.load(out / "passages" / "en")
    text = dict(zip(data.doc_ids, data.doc_texts))
    qids = random.Random(seed).sample(data.query_ids, min(n_queries, len(data.query_ids)))
    qtext = dict(zip(data.query_ids, data.query_texts))
    run = bm25_search(
        data.doc_ids,
        [tokenize(t) for t in data.doc_texts],
        qids,
        [tokenize(qtext[q]) for q in qids],
        per_query,
        progress=False,
    )
    return [(qtext[q], [text[d] for d in run[q]]) for q in qids if len(run[q]) >= min(per_query, 10)]


def matmul_peak_gflops(seconds: float = 2.0, n: int = 1536) -> float:
    """fp32 GEMM throughput on this machine right now (all threads), best of a few timed runs of
    the faster of torch's default GEMM and oneDNN (rankserve may run either: engine/backends/cpu_gemm.py)."""
    from rankserve.engine.backends.cpu_gemm import onednn_available, onednn_linear

    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels = [lambda: torch.mm(a, b)] + ([lambda: onednn_linear(a, b, None)] if onednn_available() else [])
    best = 0.0
    for fn in kernels:
        fn()
        deadline = time.perf_counter() + seconds / len(kernels)
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            for _ in range(4):
                fn()
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def bert_flops(lengths: list[int], hidden: int, inter: int, layers: int) -> float:
    """Useful FLOPs of a BERT encoder over real tokens: linears + attention on each sequence's own length."""
    linear = 2 * (4 * hidden * hidden + 2 * hidden * inter)
    return float(sum(layers * (t * linear + 4 * t * t * hidden) for t in lengths))


def best_of(fn: Callable[[], object], rounds: int) -> tuple[float, object]:
    """Minimum wall time over ``rounds`` runs (the least-disturbed run on a noisy machine)."""
    best, out = float("inf"), None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out
