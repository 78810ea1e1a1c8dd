"""CPU attention A/B: the grouped, padded SDPA call (models/attention.py, as the runner uses it)
vs (a) one unmasked SDPA call per sequence (no padding at all) and (b) the same grouped grids
computed as batched products around a softmax, in chunks of heads whose fp32 scores fit in 1 MiB
(L2-sized), for grids up to 384 tokens. MiniLM's 12 heads of 32, four batch shapes; checks all
give the same output, prints GFLOP/s (real tokens' FLOPs) and each variant's speed relative to grouped.

    python bench/attention_ab.py
"""

import contextlib
import random
import time
import types

import torch
import torch.nn.functional as F

from rankserve.models.batch import Batch

CPU_ATTENTION_GROUP_RATIO = 0.9  # the length groups the CPU runner used before per-sequence attention
from rankserve.models import attention

torch.manual_seed(0)
rng = random.Random(0)
H, D = 12, 32
SCORE_BYTES = 1 << 20  # fp32 scores per chunk of heads


def chunked_sdpa(qh, kh, vh, attn_mask=None, scale=None, enable_gqa=False):
    """SDPA's contract ([B, nh, T, d], boolean key mask) as baddbmm -> softmax -> bmm per chunk."""
    B, nh, T, d = qh.shape
    if T > 384:  # long grids: the fused kernel is faster
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, scale=scale)
    q, k, v = (x.reshape(B * nh, T, d) for x in (qh, kh, vh))
    bias = torch.zeros(B * nh, 1, T)
    if attn_mask is not None:  # [B, 1, 1, T] real keys
        bias = bias.masked_fill(~attn_mask.expand(B, nh, 1, T).reshape(B * nh, 1, T), float("-inf"))
    out = torch.empty_like(q)
    step = max(1, SCORE_BYTES // (T * T * 4))
    for s in range(0, B * nh, step):
        e = min(B * nh, s + step)
        scores = torch.baddbmm(bias[s:e].expand(e - s, T, T), q[s:e], k[s:e].transpose(1, 2), alpha=scale or d**-0.5)
        torch.bmm(torch.softmax(scores, -1), v[s:e], out=out[s:e])
    return out.view(B, nh, T, d)


@contextlib.contextmanager
def sdpa_replaced_by(fn):
    """models/attention.py's SDPA call swapped for ``fn`` (its padding and grouping unchanged)."""
    real = attention.F
    attention.F = types.SimpleNamespace(scaled_dot_product_attention=fn)
    try:
        yield
    finally:
        attention.F = real


def run(lengths, rounds=5):
    ids = [[1] * n for n in lengths]
    b = Batch.from_sequences(ids, pad_id=0)
    p = b.packed(CPU_ATTENTION_GROUP_RATIO)  # what the CPU runner does: length groups
    N = int(sum(lengths))
    q, k, v = (torch.randn(N, H * D) for _ in range(3))

    def grouped():
        return attention.packed_attention(q, k, v, p, H, H)

    cu = p.cu_seqlens.tolist()

    def per_seq():
        outs = []
        for s, e in zip(cu[:-1], cu[1:]):
            n = e - s
            qh, kh, vh = (x[s:e].view(n, H, D).transpose(0, 1) for x in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qh, kh, vh).transpose(0, 1).reshape(n, H * D))
        return torch.cat(outs)

    def chunked():
        with sdpa_replaced_by(chunked_sdpa):
            return grouped()

    a = grouped()
    for other in (per_seq(), chunked()):
        assert (a - other).abs().max() < 1e-4, (a - other).abs().max()
    best = {}
    for _ in range(rounds):  # interleaved: drift on a shared host hits all variants alike
        for name, fn in (("grouped", grouped), ("per_seq", per_seq), ("chunked", chunked)):
            s = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - s)
    flops = sum(4 * n * n * H * D for n in lengths)
    return best, flops


for label, lengths in (
    ("mixed 16-512 x32", [int(16 * 32 ** rng.random()) for _ in range(32)]),
    ("uniform 256 x16", [256] * 16),
    ("uniform 128 x32", [128] * 32),
    ("short 24-64 x64", [rng.randint(24, 64) for _ in range(64)]),
):
    best, flops = run(lengths)
    g = best["grouped"]
    print(
        f"{label:18} grouped {g * 1e3:7.2f} ms ({flops / g / 1e9:5.1f} GF/s)  "
        + "  ".join(
            f"{name} {flops / best[name] / 1e9:5.1f} GF/s = {g / best[name]:.2f}x" for name in ("per_seq", "chunked")
        )
    )
