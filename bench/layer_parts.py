"""Where a MiniLM-L6 cross-encoder layer spends its time on CPU: each part timed on its own over
the mixed-length workload's batches (the engine's CPU token budget), with its GFLOP/s and the
fraction of the same run's fp32 GEMM peak. No profiler (it inflates small ops), best of rounds.

    python bench/layer_parts.py [--queries 4] [--per-query 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, matmul_peak_gflops, minilm_cross_encoder, workload  # noqa: E402

from rankserve.engine.backends.cpu import available_cores  # noqa: E402
from rankserve.engine.backends.cpu_gemm import use_cpu_gemm  # noqa: E402
from rankserve.engine.backends.malloc import retain_freed_memory  # noqa: E402
from rankserve.engine.backends.torch_runner import packed_batch  # noqa: E402
from rankserve.engine.batcher import WorkItem, cut_batches  # noqa: E402
from rankserve.engine.engine import BATCH_TOKENS  # noqa: E402
from rankserve.engine.tokenize import TokenizerPolicy  # noqa: E402
from rankserve.models.attention import packed_attention  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402
from rankserve.models.rows import by_rows  # noqa: E402

CPU_ATTENTION_GROUP_RATIO = 0.9  # the length groups the CPU runner used before per-sequence attention


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--per-query", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(available_cores())
    retain_freed_memory()
    spec = load_model(minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce"))
    gemm = use_cpu_gemm(spec.module)  # as the engine does
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=True
    )
    items = [e for q, ps in workload("mixed", args.queries, args.per_query) for e in policy.pairs(q, ps, "END")]
    batches = cut_batches([WorkItem(e, None) for e in items], BATCH_TOKENS["cpu"])
    packs = [packed_batch(spec, [w.encoded for w in b]) for b in batches]  # one attention grid per batch
    grouped = [packed_batch(spec, [w.encoded for w in b], CPU_ATTENTION_GROUP_RATIO) for b in batches]
    c = spec.module.bert.config
    h, inter, heads = c.hidden_size, c.intermediate_size, c.num_attention_heads
    layer = spec.module.bert.encoder.layer[0]
    sa = layer.attention.self
    xs = [torch.randn(int(p.cu_seqlens[-1]), h) for p in packs]
    qkv = [(sa.query(x), sa.key(x), sa.value(x)) for x in xs]
    grids = [
        tuple(p.pad(t).view(p.batch_size, p.seq_len, heads, h // heads).transpose(1, 2) for t in three)
        for three, p in zip(qkv, packs)
    ]
    masks = [None if p.full else p.key_mask[:, None, None, :] for p in packs]
    outs = [F.scaled_dot_product_attention(*g, attn_mask=m) for g, m in zip(grids, masks)]
    n = sum(x.shape[0] for x in xs)
    real_attn = sum(4 * len(w.encoded) ** 2 * h for b in batches for w in b)
    padded_attn = sum(4 * p.batch_size * p.seq_len**2 * h for p in packs)

    parts = {  # name: (function over all batches, useful FLOPs)
        "q/k/v linears": (lambda: [(sa.query(x), sa.key(x), sa.value(x)) for x in xs], 3 * 2 * n * h * h),
        "re-pad q/k/v": (lambda: [[p.pad(t) for t in three] for three, p in zip(qkv, packs)], 0),
        "attention (SDPA), one grid per batch": (
            lambda: [F.scaled_dot_product_attention(*g, attn_mask=m) for g, m in zip(grids, masks)],
            real_attn,
        ),
        "attention incl. pad/unpad, grouped (CPU default)": (
            lambda: [packed_attention(*three, p, heads, heads) for three, p in zip(qkv, grouped)],
            real_attn,
        ),
        "unpad output": (
            lambda: [p.unpad(o.transpose(1, 2).reshape(p.batch_size, p.seq_len, h)) for o, p in zip(outs, packs)],
            0,
        ),
        "out linear + LayerNorm": (lambda: [layer.attention.output(x, x) for x in xs], 2 * n * h * h),
        "MLP + LayerNorm (row slices)": (
            lambda: [by_rows(lambda r: layer.output(layer.intermediate(r), r), x) for x in xs],
            4 * n * h * inter,
        ),
    }
    peak = 0.0
    times = {name: float("inf") for name in parts}
    with torch.inference_mode():
        for _ in range(args.rounds):
            peak = max(peak, matmul_peak_gflops(seconds=1.0))
            for name, (fn, _) in parts.items():
                times[name] = min(times[name], best_of(fn, 2)[0])
    total = sum(t for name, t in times.items() if "grouped" not in name)  # a layer as before grouping
    print(
        f"{len(items)} pairs, {n} real tokens in {len(packs)} batches of <= {BATCH_TOKENS['cpu']} tokens; "
        f"attention FLOPs padded/real {padded_attn / real_attn:.2f}; GEMM peak {peak:.1f} GFLOP/s; "
        f"{torch.get_num_threads()} threads; linear layers: {gemm}"
    )
    print("(share of layer: of a layer with one attention grid per batch; the grouped row replaces the")
    print(" re-pad, SDPA and unpad rows)")
    print("| part (one layer) | ms | share of layer | GFLOP/s | % of peak |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, flops) in parts.items():
        rate = flops / times[name] / 1e9 if flops else 0.0
        print(
            f"| {name} | {times[name] * 1e3:.1f} | {times[name] / total:.0%} | "
            f"{f'{rate:.0f}' if flops else '-'} | {f'{rate / peak:.0%}' if flops else '-'} |"
        )


if __name__ == "__main__":
    main()
