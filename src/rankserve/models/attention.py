"""The one attention call site shared by every family: packed q/k/v in, packed output out.

Attention is the only step that needs the [B, T] grid; everything else runs on packed tokens.
Causality is decided by the mask alone (``causal=True`` adds the triangle; ``window=w`` keeps keys
within w positions either side, ModernBERT's local layers), so the bidirectional encoders, the
sliding-window layers and causal decoders share this code. ``scaled_dot_product_attention`` picks a fused
kernel (flash / memory-efficient) that never materialises a full fp32 score matrix per head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rankserve.models.batch import Packed


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packed: Packed,
    num_heads: int,
    num_kv_heads: int,
    causal: bool = False,
    window: int = 0,
    scale: float | None = None,
    bias: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """q [N, nh*hd], k/v [N, nkv*hd] -> [N, nh*hd]; ``window`` > 0: |query - key| <= window only.

    ``scale`` replaces 1/sqrt(head_dim); ``bias(q, k, pos)`` (q, k [B, nh, T, hd] on the grid, pos
    [B, T] each token's position) returns an additive [B, nh, T, T] score bias (DeBERTa's relative
    position terms), added after scaling, with masked keys then set to -inf."""
    if packed.groups:  # each group of similar lengths on its own, tighter grid (Batch.packed)
        return torch.cat(
            [
                packed_attention(q[s:e], k[s:e], v[s:e], g, num_heads, num_kv_heads, causal, window, scale, bias)
                for s, e, g in packed.groups
            ]
        )
    head_dim = q.shape[-1] // num_heads
    bsz, width = packed.batch_size, packed.seq_len

    def heads(x: torch.Tensor, n: int) -> torch.Tensor:  # [N, n*hd] -> [B, n, T, hd]
        return packed.pad(x).view(bsz, width, n, head_dim).transpose(1, 2)

    qh, kh, vh = heads(q, num_heads), heads(k, num_kv_heads), heads(v, num_kv_heads)
    mask = None
    window = window if 0 < window < width - 1 else 0  # a window wider than the grid masks nothing
    if not packed.full or causal or window:  # with no padding SDPA takes its fastest, mask-free path
        mask = packed.key_mask[:, None, None, :]  # [B, 1, 1, T]: keys that are real tokens
        # With left padding a row must still compare *real* token positions, not grid columns.
        pos = packed.key_mask.long().cumsum(1)
        if causal:
            mask = mask & (pos[:, None, :, None] >= pos[:, None, None, :])
        if window:
            mask = mask & ((pos[:, None, :, None] - pos[:, None, None, :]).abs() <= window)
    if bias is not None:
        extra = bias(qh, kh, packed.key_mask.long().cumsum(1))
        mask = extra if mask is None else extra.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=num_heads != num_kv_heads
    )  # [B, nh, T, hd]
    return packed.unpad(out.transpose(1, 2).reshape(bsz, width, num_heads * head_dim))
