"""glibc malloc thresholds (engine/backends/malloc.py) on vs off: the MiniLM-L6 cross-encoder forward on
the mixed-length workload, cut into the CPU's default token budget, in two child processes per
round (the setting is process-wide and cannot be undone), rounds interleaved.

Prints pairs/s (best round), the ratio, minor page faults per pass, and max |difference| of the
logits (the setting changes where memory comes from, never the math: expect 0).

    python bench/malloc.py [--rounds 3] [--queries 4] [--per-query 64] [--cpu-gemm auto|torch|onednn]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import minilm_cross_encoder, workload  # noqa: E402

from rankserve.engine.backends.cpu import available_cores  # noqa: E402
from rankserve.engine.backends.cpu_gemm import use_cpu_gemm  # noqa: E402
from rankserve.engine.backends.malloc import retain_freed_memory  # noqa: E402
from rankserve.engine.backends.torch_runner import packed_batch  # noqa: E402
from rankserve.engine.batcher import WorkItem, cut_batches  # noqa: E402
from rankserve.engine.engine import BATCH_TOKENS  # noqa: E402
from rankserve.engine.outputs import finish  # noqa: E402
from rankserve.engine.tokenize import TokenizerPolicy  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402


def child(mode: str, gemm: str, queries: int, per_query: int, passes: int) -> None:
    torch.set_num_threads(available_cores())
    if mode == "retain":
        assert retain_freed_memory(), "not glibc"
    spec = load_model(minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce"))
    use_cpu_gemm(spec.module, gemm)
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=True
    )
    items = [e for q, ps in workload("mixed", queries, per_query) for e in policy.pairs(q, ps, "END")]
    batches = [[w.encoded for w in b] for b in cut_batches([WorkItem(e, None) for e in items], BATCH_TOKENS["cpu"])]
    packs = [packed_batch(spec, b) for b in batches]
    best, faults = float("inf"), 0
    with torch.inference_mode():
        for _ in range(passes):
            f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            logits = np.concatenate([finish(spec, spec.module(p).numpy()) for p in packs])
            best = min(best, time.perf_counter() - t)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    print(json.dumps({"pairs_s": len(items) / best, "faults": faults, "logits": logits.tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--per-query", type=int, default=64)
    ap.add_argument("--passes", type=int, default=3, help="forward passes per child (first warms up)")
    ap.add_argument("--cpu-gemm", default="auto", help="linear-layer library, as the server's --cpu-gemm")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.cpu_gemm, args.queries, args.per_query, args.passes)
    runs: dict[str, list[dict]] = {"default": [], "retain": []}
    for _ in range(args.rounds):
        for mode in runs:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    "--cpu-gemm",
                    args.cpu_gemm,
                    "--queries",
                    str(args.queries),
                    "--per-query",
                    str(args.per_query),
                    "--passes",
                    str(args.passes),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {m: max(runs[m], key=lambda r: r["pairs_s"]) for m in runs}
    diff = (torch.tensor(best["retain"]["logits"]) - torch.tensor(best["default"]["logits"])).abs().max().item()
    print(
        f"{args.queries * args.per_query} pairs, mixed 16..512 tokens, {BATCH_TOKENS['cpu']}-token batches, "
        f"{available_cores()} threads, --cpu-gemm {args.cpu_gemm}, best of {args.rounds} rounds x "
        f"{args.passes - 1} timed passes"
    )
    print("| malloc | pairs/s | vs default | minor faults per pass |")
    print("|---|---:|---:|---:|")
    for mode, r in best.items():
        print(f"| {mode} | {r['pairs_s']:.1f} | {r['pairs_s'] / best['default']['pairs_s']:.2f}x | {r['faults']} |")
    print(f"max |d logit| {diff:.1e}")


if __name__ == "__main__":
    main()
