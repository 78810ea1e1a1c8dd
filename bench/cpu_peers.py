"""rankserve against the CPU rerankers a user would really pick, same model, same pairs, one run.

Peers (bench/peer_scorers.py, each in the venv that holds it: ``--python st=/venv/bin/python``):
sentence-transformers ``CrossEncoder`` on torch, ONNX (plain, its O3-optimized graph, its dynamic
int8 export) and OpenVINO; fastembed's ``TextCrossEncoder``; FlashRank; Infinity's optimum (ONNX
Runtime) engine (``--python infinity-optimum=...``; its torch engine: bench/infinity_peer.py).
rankserve: its backends and modes (torch fp32 = the default, onnxruntime fp32 / int8, OpenVINO
fp32 / bf16, torch mixed bf16).

Two measurements per contender:
- offline: every pair of the workload in one call (peers) or every request at once (rankserve's
  Engine), best of ``--rounds``, each in its own child process;
- HTTP: ``--clients`` concurrent clients sending the same seeded requests (fresh texts: no cache
  can answer) to the contender's server: ``rankserve serve`` with that mode's flags, or the peer
  behind bench/naive_server.py (FastAPI, one scorer call per request, what a team wraps a library in;
  ``--serial-peers``: with a lock, so that concurrent calls do not oversubscribe the cores).

Printed: pairs/s, ratio to the best peer, and agreement with the fp32 torch reference
(sentence-transformers on torch): max |d logit|, top-5 overlap and Kendall tau per request. A peer
that cannot run says why. The host's CPU flags head the output.

    python bench/cpu_peers.py [--models minilm,base] [--requests 24] [--passages 10-50] [--clients 4]
        [--python st=/tmp/peers/venv-st/bin/python] [--python fastembed=...] [--python flashrank=...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    base_cross_encoder,
    cpu_line,
    engine_offline,
    free_port,
    minilm_cross_encoder,
    rankserve_cmd,
    start_server,
    stop_server,
)
from int8 import agreement  # noqa: E402

from rankserve import loadgen  # noqa: E402

BENCH = Path(__file__).parent
PEERS = [
    "st-torch",
    "st-onnx",
    "st-onnx-O3",
    "st-onnx-int8",
    "st-openvino",
    "fastembed",
    "flashrank",
    "infinity-optimum",
]
PEER_PACKAGE = {
    "st": "sentence-transformers",
    "fastembed": "fastembed",
    "flashrank": "flashrank",
    "infinity-optimum": "infinity-emb",
}
ONNX_PEERS = {"fastembed", "flashrank", "infinity-optimum"}  # they load bench/peer_scorers.py's optimum export
LOSSY = {"st-onnx-int8", "rankserve onnxruntime int8", "rankserve openvino bf16", "rankserve torch bf16"}
MODES = {  # rankserve: config overrides (offline) = serve flags (HTTP)
    "rankserve torch fp32": {"backend": "torch", "dtype": "float32"},
    "rankserve onnxruntime fp32": {"backend": "onnxruntime"},
    "rankserve openvino fp32": {"backend": "openvino", "dtype": "float32"},
    "rankserve onnxruntime int8": {"backend": "onnxruntime", "quantize": "int8"},
    "rankserve openvino bf16": {"backend": "openvino", "dtype": "bfloat16"},
    "rankserve torch bf16": {"backend": "torch", "dtype": "bfloat16"},
}


@dataclass
class Row:
    name: str
    offline: float | None = None  # pairs/s
    http: float | None = None  # pairs/s with --clients clients
    p99_ms: float | None = None
    scores: list[float] = field(default_factory=list)
    note: str = ""


def native_bf16() -> bool:
    return "avx512_bf16" in Path("/proc/cpuinfo").read_text() or "amx_bf16" in Path("/proc/cpuinfo").read_text()


def family(peer: str) -> str:
    return "st" if peer.startswith("st-") else peer


def run_peer_offline(
    python: str, peer: str, model_dir: Path, work_dir: Path, workload: Path, rounds: int
) -> tuple[float, list[float], str]:
    cmd = [python, str(BENCH / "peer_scorers.py"), peer, str(model_dir), str(work_dir), str(workload), str(rounds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["scores"], result["version"]


def onnx_export(python: str, model_dir: Path, work_dir: Path) -> str:
    """Export the model once for fastembed, FlashRank and Infinity (the first two venvs hold no
    torch) with the sentence-transformers (or Infinity) venv's optimum; returns why it failed, or
    "" when the export is there."""
    out = subprocess.run(
        [python, str(BENCH / "peer_scorers.py"), "export", str(model_dir), str(work_dir)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return "" if out.returncode == 0 else f"ONNX export failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}"


def http(cmd: list[str], port: int, env: dict, args, clients: int) -> loadgen.LevelResult:
    proc = start_server(cmd, port, env, timeout=600)
    try:
        return loadgen.run(
            f"http://127.0.0.1:{port}",
            [clients],
            args.http_requests,
            loadgen._range(args.passages),
            loadgen._range(args.tokens),
            seed=7,
        )[0]
    finally:
        stop_server(proc)


def serve_flags(overrides: dict) -> list[str]:
    return [x for k, v in overrides.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def measure_model(label: str, model_dir: Path, args, pythons: dict[str, str]) -> list[Row]:
    bodies = loadgen.make_requests(args.requests, loadgen._range(args.passages), loadgen._range(args.tokens), 3)
    work = [(b["query"]["text"], [p["text"] for p in b["passages"]]) for b in bodies]
    sizes = [len(ps) for _, ps in work]
    n = sum(sizes)
    work_file = Path(tempfile.mkstemp(suffix=".json")[1])
    work_file.write_text(json.dumps(work))
    work_dir = Path(tempfile.gettempdir()) / f"rankserve-peers-{model_dir.name}"
    print(f"\n## {label}: {len(work)} requests, {n} pairs ({args.passages} passages of {args.tokens} words)")
    rows: list[Row] = []
    needs_export = any(p in ONNX_PEERS for p in args.peers)
    # the export needs optimum: the sentence-transformers venv has it, so has Infinity's
    exporter = pythons.get("st") or pythons.get("infinity-optimum") or sys.executable
    export_note = onnx_export(exporter, model_dir, work_dir) if needs_export else ""
    for peer in [p for p in PEERS if p in args.peers]:
        row = Row(peer)
        python = pythons.get(peer) or pythons.get(family(peer)) or sys.executable
        try:
            if peer in ONNX_PEERS and export_note:
                raise RuntimeError(export_note)
            seconds, row.scores, ver = run_peer_offline(python, peer, model_dir, work_dir, work_file, args.rounds)
            row.note = f"{PEER_PACKAGE[family(peer)]} {ver}"
            row.offline = n / seconds
            if not args.offline_only:
                env = {
                    "MODEL_DIR": str(model_dir),
                    "PEER": peer,
                    "WORK_DIR": str(work_dir),
                    "PEER_SERIAL": "1" if args.serial_peers else "0",
                }
                port = free_port()
                cmd = [
                    python,
                    "-m",
                    "uvicorn",
                    "naive_server:app",
                    "--app-dir",
                    str(BENCH),
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ]
                result = http(cmd, port, env, args, args.clients)
                row.http, row.p99_ms = result.pairs_per_s, result.p99_ms
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            row.note = f"could not run: {type(exc).__name__}: {str(exc)[:160]}"
        print(f"  {peer}: offline {row.offline or 0:.1f} pairs/s, HTTP {row.http or 0:.1f} pairs/s {row.note}")
        rows.append(row)
    for mode, overrides in MODES.items():
        if mode not in args.modes:
            continue
        row = Row(mode)
        if "bf16" in mode and not native_bf16():
            row.note = "skipped: no native bf16 on this CPU (emulated bf16 is 5x slower)"
            rows.append(row)
            continue
        seconds, row.scores = engine_offline(model_dir, work, overrides, args.rounds)
        row.offline = n / seconds
        if not args.offline_only:
            port = free_port()
            result = http(
                rankserve_cmd(port, "--model", str(model_dir), *serve_flags(overrides)), port, {}, args, args.clients
            )
            row.http, row.p99_ms = result.pairs_per_s, result.p99_ms
        print(f"  {mode}: offline {row.offline:.1f} pairs/s, HTTP {row.http or 0:.1f} pairs/s")
        rows.append(row)
    print_table(rows, sizes, args.clients)
    return rows


def split(scores: list[float], sizes: list[int]) -> list[list[float]]:
    out, i = [], 0
    for k in sizes:
        out.append(scores[i : i + k])
        i += k
    return out


def print_table(rows: list[Row], sizes: list[int], clients: int) -> None:
    ref = next(
        (r for r in rows if r.name == "st-torch" and r.scores),
        next((r for r in rows if r.name == "rankserve torch fp32" and r.scores), None),
    )
    peers = [r for r in rows if not r.name.startswith("rankserve") and r.offline]
    best_off = max((r.offline for r in peers), default=None)
    best_http = max((r.http for r in peers if r.http), default=None)
    best_off_name = next((r.name for r in peers if r.offline == best_off), "-")
    best_http_name = next((r.name for r in peers if r.http == best_http), "-")
    print(
        f"\nreference for agreement: {ref.name if ref else 'none'}; best peer offline {best_off_name}, "
        f"over HTTP {best_http_name}"
    )
    print(
        f"| contender | offline pairs/s | vs best peer | HTTP ({clients} clients) pairs/s | vs best peer | "
        "HTTP p99 ms | max abs d-logit | top-5 overlap | Kendall tau | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r.offline is None:
            print(f"| {r.name} | | | | | | | | | {r.note} |")
            continue
        delta, top5, tau = agreement(split(ref.scores, sizes), split(r.scores, sizes)) if ref else (0, 0, 0)
        vs_off = f"{r.offline / best_off:.2f}x" if best_off else ""
        vs_http = f"{r.http / best_http:.2f}x" if best_http and r.http else ""
        http_s = f"{r.http:.1f}" if r.http else ""
        p99 = f"{r.p99_ms:.0f}" if r.p99_ms else ""
        # OpenVINO's CPU plugin runs bf16 by default where the CPU has it: sentence-transformers
        # passes that default on, so its OpenVINO backend is lossy there
        lossy = " (lossy)" if r.name in LOSSY or (r.name == "st-openvino" and native_bf16()) else ""
        print(
            f"| {r.name}{lossy} | {r.offline:.1f} | {vs_off} | {http_s} | {vs_http} | {p99} | {delta:.1e} | "
            f"{top5:.3f} | {tau:.3f} | {r.note} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="minilm", help="minilm (MiniLM-L6 shape), base (BERT-base shape)")
    ap.add_argument("--requests", type=int, default=24, help="requests in the offline workload")
    ap.add_argument("--http-requests", type=int, default=32, help="requests per HTTP run")
    ap.add_argument("--passages", default="10-50")
    ap.add_argument("--tokens", default="16-256", help="words per passage, log-uniform")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="PEER=PYTHON",
        help="the interpreter of the venv holding a peer (st, fastembed, flashrank or a peer name)",
    )
    ap.add_argument("--offline-only", action="store_true")
    ap.add_argument(
        "--serial-peers",
        action="store_true",
        help="peer servers score one request at a time (a lock) instead of concurrently",
    )
    args = ap.parse_args()
    args.peers = args.peers.split(",")
    args.modes = args.modes.split(",")
    pythons = dict(p.split("=", 1) for p in args.python)
    from importlib.metadata import version

    print(
        f"host: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; rankserve "
        f"{version('rankserve')}, onnxruntime {version('onnxruntime')}, openvino {version('openvino')}; "
        f"{time.strftime('%Y-%m-%d')}"
    )
    tmp = Path(tempfile.gettempdir())
    models = {
        "minilm": (
            "MiniLM-L6 cross-encoder (real encoder, random head)",
            lambda: minilm_cross_encoder(tmp / "rankserve-bench-minilm-ce"),
        ),
        "base": (
            "BERT-base-shape cross-encoder (random weights)",
            lambda: base_cross_encoder(tmp / "rankserve-bench-base-ce"),
        ),
    }
    for name in args.models.split(","):
        label, make = models[name]
        measure_model(label, make(), args, pythons)


if __name__ == "__main__":
    main()
