"""Batch invariance on CPU, and what it costs: the same pairs scored alone and inside the engine's
mixed-length batches, under (a) the path before batch invariance (length groups at 0.9 sharing a
padded attention grid, linears at any row count), (b) today's default float32 path (each sequence's
attention on its own grid, no product under 64 rows) and (c) mixed bf16 (``--dtype bfloat16``),
on a MiniLM-L6 cross-encoder. Prints, per mode: max |logit alone - logit in a batch|, how many
pairs differ at all, and pairs/s over the batches, with the ratio to (a) from this same run, plus
the 1..9-row GEMM check behind ``cpu_gemm.at_least_rows`` and the CPU flags.

    python bench/batch_invariance.py [--queries 4] [--per-query 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_line, minilm_cross_encoder, workload  # noqa: E402

from rankserve.engine.backends import cpu_gemm  # noqa: E402
from rankserve.engine.backends import torch_runner as runner_module  # noqa: E402
from rankserve.engine.backends.torch_runner import TorchRunner  # noqa: E402
from rankserve.engine.batcher import WorkItem, cut_batches  # noqa: E402
from rankserve.engine.engine import BATCH_TOKENS  # noqa: E402
from rankserve.engine.tokenize import TokenizerPolicy  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402

OLD_GROUP_RATIO = 0.9


def small_row_gemm_check() -> str:
    """Rows 0..m-1 of an m-row product vs the same rows in a 64-row product, for m = 1..16."""
    torch.manual_seed(0)
    w, x = torch.randn(1536, 384), torch.randn(64, 384)
    full = F.linear(x, w)
    off = [m for m in range(1, 17) if not torch.equal(F.linear(x[:m], w), full[:m])]
    return f"torch GEMM rows that differ from the 64-row product's: m = {off or 'none'}"


def old_runner(directory: Path) -> TorchRunner:
    """Today's runner with the pre-invariance choices put back: grouped padded attention, plain linears."""
    runner = TorchRunner(load_model(directory), torch.device("cpu"), dtype="float32")
    for m in runner.spec.module.modules():
        if type(m) is cpu_gemm.TorchLinear:
            m.__class__ = nn.Linear
    runner.alone = False
    return runner


def score(runner: TorchRunner, items, old: bool) -> np.ndarray:
    if not old:
        return runner.forward(items)
    real = runner_module.packed_batch
    runner_module.packed_batch = lambda spec, its, group_ratio=0.0, alone=False: real(spec, its, OLD_GROUP_RATIO)
    try:
        return runner.forward(items)
    finally:
        runner_module.packed_batch = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--per-query", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    directory = minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce")
    print(f"cpu: {cpu_line()}, {torch.get_num_threads()} threads")
    print(small_row_gemm_check())
    spec = load_model(directory)
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=True
    )
    items = [e for q, ps in workload("mixed", args.queries, args.per_query) for e in policy.pairs(q, ps, "END")]
    batches = [[w.encoded for w in b] for b in cut_batches([WorkItem(e, None) for e in items], BATCH_TOKENS["cpu"])]
    modes = {
        "(a) before: grouped grids": (old_runner(directory), True),
        "(b) default float32": (TorchRunner(load_model(directory), torch.device("cpu")), False),
        "(c) --dtype bfloat16": (TorchRunner(load_model(directory), torch.device("cpu"), dtype="bfloat16"), False),
    }
    rates = {}
    for label, (runner, old) in modes.items():
        score(runner, batches[0], old)  # warm-up
        best = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            batched = np.concatenate([score(runner, b, old) for b in batches])
            best = min(best, time.perf_counter() - t)
        alone = np.concatenate([score(runner, [it], old) for b in batches for it in b])
        diff = np.abs(batched - alone)
        rates[label] = len(batched) / best
        print(
            f"{label:28s} pairs differ {int((diff > 0).sum()):4d}/{len(diff)}  max |d logit| {diff.max():.2e}  "
            f"{rates[label]:7.1f} pairs/s  x{rates[label] / rates['(a) before: grouped grids']:.3f}  ({runner.precision})"
        )


if __name__ == "__main__":
    main()
