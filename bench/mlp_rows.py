"""Row-sliced MLP (models/rows.py) vs the whole batch at once, same process, interleaved rounds.

Measures a MiniLM-size BERT MLP (384 -> 1536 GELU -> 384, residual + LayerNorm) on a packed batch
of N tokens, and the whole MiniLM-L6 cross-encoder forward on a 64-pair batch, with the slice size
set to "whole batch" and to ``CPU_ROWS``. Prints GFLOP/s, the ratio, and max |difference|.

    python bench/mlp_rows.py [--tokens 16384] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, minilm_cross_encoder, workload  # noqa: E402

import rankserve.models.rows as rows  # noqa: E402
from rankserve.engine.backends.torch_runner import packed_batch  # noqa: E402
from rankserve.engine.tokenize import TokenizerPolicy  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402

WHOLE = 1 << 40


def timed(fn, rounds: int, slice_rows: int) -> tuple[float, torch.Tensor]:
    rows.CPU_ROWS = slice_rows
    with torch.inference_mode():
        return best_of(fn, rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    default_rows = rows.CPU_ROWS
    spec = load_model(minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce"))
    layer = spec.module.bert.encoder.layer[0]
    c = spec.module.bert.config
    x = torch.randn(args.tokens, c.hidden_size)
    mlp_flops = 4 * args.tokens * c.hidden_size * c.intermediate_size

    def mlp():
        return rows.by_rows(lambda h: layer.output(layer.intermediate(h), h), x)

    query, passages = workload("uniform", 1, 64)[0]
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=True
    )
    packed = packed_batch(spec, policy.pairs(query, passages, "END"))

    def model():
        return spec.module(packed)

    print(f"torch threads {torch.get_num_threads()}, slice {default_rows} rows")
    print("| what | whole batch | sliced | sliced / whole | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for name, fn, unit in (("MLP block, GFLOP/s", mlp, mlp_flops / 1e9), ("MiniLM-L6 CE forward, pairs/s", model, 64)):
        t_whole = t_sliced = float("inf")
        for _ in range(args.rounds):  # interleaved
            t, whole = timed(fn, 1, WHOLE)
            t_whole = min(t_whole, t)
            t, sliced = timed(fn, 1, default_rows)
            t_sliced = min(t_sliced, t)
        diff = (whole - sliced).abs().max().item()
        print(f"| {name} | {unit / t_whole:.1f} | {unit / t_sliced:.1f} | {t_whole / t_sliced:.2f}x | {diff:.1e} |")
    rows.CPU_ROWS = default_rows


if __name__ == "__main__":
    main()
