"""Cold start: from ``rankserve serve`` to ready (and to a first answer), where the time goes, and RSS.

Each round starts ``python -m rankserve.cli serve`` as a fresh process (page cache warm: the model
files were read once before), polls ``/v1/health/ready`` every 10 ms, reads the process's RSS when
ready, sends one ranking request, and stops it. One untimed start first fills the caches a second
start reads (the CPU GEMM choice; with ``--backend onnxruntime|openvino`` the ONNX export and
OpenVINO's compiled model). Phases come from the server's own log lines (JSON, stamped when this
process reads them): interpreter + imports until the first line, weights loaded (or a cached
export's spec read back), CPU GEMM / precision chosen, ready (warm-up pass done).

The peer, in the same run: sentence-transformers loading the same folder in a fresh process and
encoding one text (what a script or a peer server does before its first answer).

Models: the packaged all-MiniLM-L6-v2 (22M parameters) and a Llama-3.2-1B-shaped bidirectional
reranker with random weights (16 layers, hidden 2048, 32000-token vocabulary, bf16 on disk like
NVIDIA's checkpoints), written once to a temp folder.

    python bench/cold_start.py [--rounds 3] [--models minilm,llama-1b] [--serve-args "--dtype float32"]

Before the models, where the time before the first log line goes: fresh interpreters import what
``rankserve serve`` imports, one layer at a time (the CLI and asyncio, torch, then FastAPI /
starlette / pydantic / uvicorn and rankserve's API and engine; for an ONNX backend the runtime in
place of torch, which a cached export never imports), each timed in-process; median of the rounds.
``--models ""`` prints only that.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port  # noqa: E402

from rankserve.models.model_dir import default_model_dir  # noqa: E402

# (phase, log text that ends it): weights are "loaded" by torch, or read back with a cached ONNX export.
PHASES = (
    ("imports", ("first log line",)),
    ("weights", ("loaded ", "cached ONNX export")),
    ("gemm", ("cpu precision",)),
    ("ready", ("ready: serving",)),
)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A /proc status memory field in MiB: VmRSS (all resident), RssFile (file-backed: mapped files
    such as OpenVINO's compiled blob, clean page cache the kernel can drop), RssAnon (the rest)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def llama_1b(directory: Path) -> Path:
    """A Llama-3.2-1B-shaped reranker folder (random bf16 weights, MiniLM's tokenizer), built once."""
    if (directory / "model.safetensors").exists():
        return directory
    import torch
    from llama_long_context import build  # bench/ is on sys.path (above)
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    model = build(16, 32000, torch.bfloat16)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    config = dict(
        architectures=["LlamaBidirectionalForSequenceClassification"],
        model_type="llama_bidirec",
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        pooling="avg",
        num_labels=1,
        pad_token_id=0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        torch_dtype="bfloat16",
    )
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(default_model_dir() / "tokenizer.json", directory / "tokenizer.json")
    return directory


def one_serve(model: Path, serve_args: list[str]) -> dict[str, float]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "rankserve.cli",
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-format",
        "json",
        *serve_args,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marks: dict[str, float] = {}

    def read_log() -> None:
        for line in proc.stderr:
            now = time.perf_counter() - start
            marks.setdefault("imports", now)
            for phase, needles in PHASES[1:]:
                if any(needle in line for needle in needles):
                    marks.setdefault(phase, now)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
                try:
                    if client.get(url + "/v1/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            ready = time.perf_counter() - start
            rss, rss_file = rss_mib(proc.pid), rss_mib(proc.pid, "RssFile")
            r = client.post(
                url + "/v1/ranking",
                timeout=600,
                json={
                    "query": {"text": "how do I list files"},
                    "passages": [{"text": "ls lists directory contents"}, {"text": "gzip compresses"}],
                },
            )
            r.raise_for_status()
            first = time.perf_counter() - start
            gemm = client.get(url + "/v1/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=5)
    info = next((line for line in gemm.splitlines() if line.startswith("rankserve_runtime_info{")), "")
    return {
        **marks,
        "ready_s": ready,
        "first_answer_s": first,
        "rss_mib": rss,
        "rss_file_mib": rss_file,
        "runtime": info,
    }


def one_peer(model: Path) -> float:
    code = (
        "from sentence_transformers import SentenceTransformer; import sys; "
        "m = SentenceTransformer(sys.argv[1], device='cpu'); m.encode(['how do I list files'])"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(model)], check=True, capture_output=True)
    return time.perf_counter() - start


def import_steps(backend: str) -> tuple[tuple[str, str], ...]:
    """What ``rankserve serve`` imports, in order: torch for the torch backend; the runtime instead
    for an ONNX backend with its export cached (torch is never imported then)."""
    cli = ("rankserve.cli (argparse, config, asyncio, ssl)", "import rankserve.cli")
    api = ("fastapi, uvicorn, rankserve.api (routes, engine)", "import rankserve.api.server")
    if backend in ("onnxruntime", "openvino"):
        return cli, api, (backend, f"import {backend}")
    return cli, ("torch", "import torch"), api


def import_breakdown(rounds: int, backend: str) -> None:
    """Seconds per import step of ``rankserve serve``, each in a fresh interpreter, median of ``rounds``."""
    steps = import_steps(backend)
    code = (
        "import time, sys; marks = [time.perf_counter()]\n"
        + "".join(f"{stmt}; marks.append(time.perf_counter())\n" for _, stmt in steps)
        + "print(' '.join(f'{b - a:.4f}' for a, b in zip(marks, marks[1:])))"
    )
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        runs.append([float(x) for x in out.split()] + [time.perf_counter() - start])
    print("\n## imports before the first log line (fresh interpreter each round)")
    print("| step | median s |\n|---|---:|")
    for i, (label, _) in enumerate(steps):
        print(f"| {label} | {statistics.median(r[i] for r in runs):.3f} |")
    print(f"| sum of the steps | {statistics.median(sum(r[:-1]) for r in runs):.3f} |")
    print(
        f"| process spawn to exit (adds interpreter start and teardown) | {statistics.median(r[-1] for r in runs):.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="minilm,llama-1b")
    ap.add_argument("--serve-args", default="", help="more `rankserve serve` flags, e.g. '--dtype float32'")
    args = ap.parse_args()
    serve_args = shlex.split(args.serve_args)
    models = {
        "minilm": default_model_dir,
        "llama-1b": lambda: llama_1b(Path(tempfile.gettempdir()) / "rankserve-bench-llama-1b"),
    }
    print(
        f"python {sys.version.split()[0]}, cores {len(os.sched_getaffinity(0))}, serve args {serve_args or 'none'}; "
        f"median of {args.rounds} rounds (peer and ours interleaved)"
    )
    backend = next((serve_args[i + 1] for i, a in enumerate(serve_args[:-1]) if a == "--backend"), "torch")
    import_breakdown(args.rounds, backend)
    for name in filter(None, args.models.split(",")):
        model = models[name]()
        for f in model.iterdir():  # page cache warm, as on a second start
            if f.is_file():
                f.read_bytes()
        one_serve(model, serve_args)  # untimed: fills the caches a second start reads (GEMM choice, ONNX export)
        ours, peer = [], []
        for _ in range(args.rounds):
            ours.append(one_serve(model, serve_args))
            if name == "minilm":
                peer.append(one_peer(model))
        med = lambda key: statistics.median(r[key] for r in ours if key in r)  # noqa: E731
        print(f"\n## {name} ({model})\n{ours[-1]['runtime']}")
        print("| phase (s since spawn) | median |\n|---|---:|")
        for phase, _ in PHASES:
            if any(phase in r for r in ours):  # onnxruntime logs no precision choice
                print(f"| {phase} | {med(phase):.2f} |")
        print(f"| **ready** (HTTP) | **{med('ready_s'):.2f}** |\n| first answer | {med('first_answer_s'):.2f} |")
        print(f"| RSS at ready (MiB) | {med('rss_mib'):.0f} |")
        print(f"| of it file-backed (mapped files, MiB) | {med('rss_file_mib'):.0f} |")
        if peer:
            p = statistics.median(peer)
            print(
                f"\nsentence-transformers, fresh process to first vector: {p:.2f} s; "
                f"rankserve to first answer / peer: {med('first_answer_s') / p:.2f}x"
            )


if __name__ == "__main__":
    main()
