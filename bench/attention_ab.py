"""CPU attention A/B: the grouped, padded SDPA call (models/attention.py, as the runner uses it)
vs one unmasked SDPA call per sequence (no padding at all), MiniLM's 12 heads of 32, on three
batch shapes; checks both give the same output, prints ms, GFLOP/s and per-sequence speed relative to grouped.

    python bench/attention_ab.py
"""

import random
import time

import torch
import torch.nn.functional as F

from rankserve.engine.types import Batch
from rankserve.engine.runner import CPU_ATTENTION_GROUP_RATIO
from rankserve.models.attention import packed_attention
torch.manual_seed(0); rng = random.Random(0)
H, D = 12, 32
def run(lengths, rounds=5):
    ids = [[1] * n for n in lengths]
    b = Batch.from_sequences(ids, pad_id=0)
    p = b.packed(CPU_ATTENTION_GROUP_RATIO)  # what the CPU runner does: length groups
    N = int(sum(lengths))
    q, k, v = (torch.randn(N, H * D) for _ in range(3))
    def grouped():
        return packed_attention(q, k, v, p, H, H)
    cu = p.cu_seqlens.tolist()
    def per_seq():
        outs = []
        for s, e in zip(cu[:-1], cu[1:]):
            n = e - s
            qh, kh, vh = (x[s:e].view(n, H, D).transpose(0, 1) for x in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qh, kh, vh).transpose(0, 1).reshape(n, H * D))
        return torch.cat(outs)
    a, c = grouped(), per_seq()
    assert (a - c).abs().max() < 1e-4, (a - c).abs().max()
    best = {}
    for name, fn in (("grouped", grouped), ("per_seq", per_seq)):
        t = float("inf")
        for _ in range(rounds):
            s = time.perf_counter(); fn(); t = min(t, time.perf_counter() - s)
        best[name] = t
    flops = sum(4 * n * n * H * D for n in lengths)
    return best, flops
for label, lengths in (("mixed 16-512 x32", [int(16 * 32 ** rng.random()) for _ in range(32)]),
                       ("uniform 256 x16", [256] * 16), ("short 24-64 x64", [rng.randint(24, 64) for _ in range(64)])):
    best, flops = run(lengths)
    g, ps = best["grouped"], best["per_seq"]
    print(f"{label:18} grouped {g * 1e3:7.2f} ms ({flops / g / 1e9:5.1f} GF/s)  "
          f"per-seq {ps * 1e3:7.2f} ms ({flops / ps / 1e9:5.1f} GF/s)  per-seq speed {g / ps:.2f}x grouped")
