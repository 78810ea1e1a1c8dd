"""DeBERTa-v2 / v3 cross-encoders (mxbai-rerank v1) and embedders.

What differs from BERT is the attention: besides content-to-content scores q_i . k_j, each head
adds content-to-position (q_i . Pk[d(i, j)]) and position-to-content (k_j . Pq[d(i, j)]) terms,
where Pk / Pq project a table of relative-position embeddings (``rel_embeddings``, LayerNorm'd in
v3) with the key / query projections (``share_att_key``) or their own, and d(i, j) is the
relative distance i - j, log-bucketed beyond ``position_buckets / 2`` and shifted into the table.
All three terms are divided by sqrt(head_dim x (1 + number of position terms)). Here the two
position terms are computed on the attention grid and handed to the one attention call site as an
additive bias (``packed_attention(bias=...)``), so SDPA still does the softmax and the product.
Post-norm layers as BERT; the classifier pools the first token through ``pooler.dense`` and GELU.

Attribute names equal the Hugging Face keys (``deberta.embeddings.word_embeddings``,
``deberta.encoder.layer.N.attention.self.query_proj``, ``deberta.encoder.rel_embeddings``,
``pooler.dense``, ``classifier``). Not supported (refused at load): the convolution some v2
checkpoints add after the first layer (``conv_kernel_size``) and ``z_steps`` > 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankserve.errors import ModelLoadError
from rankserve.models.attention import packed_attention
from rankserve.models.batch import Packed
from rankserve.models.bert import ACTIVATIONS, DenseNorm, Intermediate
from rankserve.models.model_dir import require_one_label, tokenizer_max
from rankserve.models.pooling import encoder_embedder, pool
from rankserve.models.recipes import RecipeChoice, refuse_for_encoder
from rankserve.models.rows import by_rows


@dataclass(frozen=True, kw_only=True)
class DebertaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    embedding_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    position_biased_input: bool = False
    layer_norm_eps: float = 1e-7
    hidden_act: str = "gelu"
    pooler_hidden_act: str = "gelu"
    relative_attention: bool = True
    position_buckets: int = 256
    max_relative_positions: int = 512
    share_att_key: bool = True
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")
    norm_rel_ebd: bool = True  # rel_embeddings through a LayerNorm (v3: "layer_norm")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def span(self) -> int:
        """Half the rows of the relative-position table the attention uses."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> DebertaConfig:
        if int(cfg.get("conv_kernel_size", 0) or 0) > 0:
            raise ValueError("conv_kernel_size > 0 (a convolution after the first layer) is not supported")
        if int(cfg.get("z_steps", 0) or 0) > 1:
            raise ValueError("z_steps > 1 is not supported")
        for key in ("hidden_act", "pooler_hidden_act"):
            if cfg.get(key, "gelu") not in ACTIVATIONS:
                raise ValueError(f"{key} {cfg[key]!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
        pos_att = cfg.get("pos_att_type") or ()
        pos_att = tuple(pos_att.lower().split("|") if isinstance(pos_att, str) else pos_att)
        if set(pos_att) - {"p2c", "c2p"}:
            raise ValueError(f"pos_att_type {pos_att!r} is not supported (p2c and c2p only)")
        max_rel = int(cfg.get("max_relative_positions", -1))
        if max_rel < 1:
            max_rel = int(cfg.get("max_position_embeddings", 512))
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ValueError("hidden_size is not a multiple of num_attention_heads")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            embedding_size=int(cfg.get("embedding_size") or cfg["hidden_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
            type_vocab_size=int(cfg.get("type_vocab_size", 0)),
            position_biased_input=bool(cfg.get("position_biased_input", True)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-7)),
            hidden_act=cfg.get("hidden_act", "gelu"),
            pooler_hidden_act=cfg.get("pooler_hidden_act", "gelu"),
            relative_attention=bool(cfg.get("relative_attention", False)),
            position_buckets=int(cfg.get("position_buckets", -1)),
            max_relative_positions=max_rel,
            share_att_key=bool(cfg.get("share_att_key", False)),
            pos_att_type=pos_att,
            norm_rel_ebd="layer_norm" in str(cfg.get("norm_rel_ebd", "none")).lower(),
        )


def bucket(relative: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """Relative distances, exact within +-buckets/2 and log-spaced beyond (DeBERTa-v2's buckets)."""
    if buckets <= 0 or max_position <= 0:
        return relative
    mid = buckets // 2
    sign = torch.sign(relative)
    near = (relative < mid) & (relative > -mid)
    far = torch.where(near, torch.full_like(relative, mid - 1), relative.abs()).float()
    # float32 throughout, as the reference computes it (a double-precision log moves some ceil()s)
    logs = torch.ceil(torch.log(far / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)) + mid
    return torch.where(far <= mid, relative.float(), logs * sign).long()


class Embeddings(nn.Module):
    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.embedding_size)
        if c.position_biased_input:
            self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.embedding_size)
        if c.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.embedding_size)
        if c.embedding_size != c.hidden_size:
            self.embed_proj = nn.Linear(c.embedding_size, c.hidden_size, bias=False)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.c = c

    def forward(self, p: Packed) -> torch.Tensor:
        x = self.word_embeddings(p.input_ids)
        if self.c.position_biased_input:
            x = x + self.position_embeddings(p.position_ids)
        if self.c.type_vocab_size > 0:
            types = p.token_type_ids if p.token_type_ids is not None else torch.zeros_like(p.input_ids)
            x = x + self.token_type_embeddings(types)
        if self.c.embedding_size != self.c.hidden_size:
            x = self.embed_proj(x)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """Disentangled attention: the two relative-position terms as an additive bias on SDPA."""

    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.query_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.key_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.value_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.terms = c.pos_att_type if c.relative_attention else ()
        if c.relative_attention and not c.share_att_key:
            if "c2p" in self.terms:
                self.pos_key_proj = nn.Linear(c.hidden_size, c.hidden_size)
            if "p2c" in self.terms:
                self.pos_query_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.heads, self.head_dim, self.c = c.num_attention_heads, c.head_dim, c
        self.scale = 1.0 / math.sqrt(self.head_dim * (1 + len(self.terms)))

    def forward(self, x: torch.Tensor, p: Packed, rel: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.query_proj(x), self.key_proj(x), self.value_proj(x)
        bias = self.position_bias(rel) if self.terms else None
        return packed_attention(q, k, v, p, self.heads, self.heads, scale=self.scale, bias=bias)

    def position_bias(self, rel: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """The c2p + p2c score terms as ``packed_attention``'s ``bias(q, k, pos)``, already scaled."""
        span, heads, hd = self.c.span, self.heads, self.head_dim

        def by_head(name: str) -> torch.Tensor:  # rel [2 span, H] projected -> [heads, hd, 2 span]
            proj = getattr(self, name if self.c.share_att_key else "pos_" + name)
            return proj(rel).view(2 * span, heads, hd).permute(1, 2, 0)

        pos_k = by_head("key_proj") if "c2p" in self.terms else None
        pos_q = by_head("query_proj") if "p2c" in self.terms else None

        def bias(qh: torch.Tensor, kh: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            b, _, t, _ = qh.shape
            rel_pos = bucket(pos[:, :, None] - pos[:, None, :], self.c.position_buckets, self.c.max_relative_positions)
            index = (rel_pos + span).clamp(0, 2 * span - 1)[:, None].expand(b, heads, t, t)  # [B, H, Tq, Tk]
            total = qh.new_zeros((b, heads, t, t))
            if pos_k is not None:  # c2p: query i . position key d(i, j)
                total += torch.gather(qh @ pos_k, -1, index)
            if pos_q is not None:  # p2c: key j . position query d(i, j), gathered along the key's rows
                total += torch.gather(kh @ pos_q, -1, index.transpose(-1, -2)).transpose(-1, -2)
            return total * self.scale

        return bias


class Attention(nn.Module):
    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c, c.hidden_size)  # BERT's post-norm output (same keys)

    def forward(self, x: torch.Tensor, p: Packed, rel: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, p, rel), x)


class Layer(nn.Module):
    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c, c.intermediate_size)

    def forward(self, x: torch.Tensor, p: Packed, rel: torch.Tensor | None) -> torch.Tensor:
        h = self.attention(x, p, rel)
        return by_rows(lambda r: self.output(self.intermediate(r), r), h)


class Encoder(nn.Module):
    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        if c.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * c.span, c.hidden_size)
            if c.norm_rel_ebd:
                self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.c = c

    def forward(self, x: torch.Tensor, p: Packed) -> torch.Tensor:
        rel = None
        if self.c.relative_attention:
            rel = self.rel_embeddings.weight
            rel = self.LayerNorm(rel) if self.c.norm_rel_ebd else rel
        for layer in self.layer:
            x = layer(x, p, rel)
        return x


class DebertaModel(nn.Module):
    """Packed ids -> packed last hidden states [N, H]."""

    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)

    def forward(self, p: Packed) -> torch.Tensor:
        return self.encoder(self.embeddings(p), p)


class ContextPooler(nn.Module):
    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.act = ACTIVATIONS[c.pooler_hidden_act]

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(first))


class DebertaForSequenceClassification(nn.Module):
    """First token -> ``pooler`` (dense, GELU) -> ``classifier`` [B, 1]."""

    def __init__(self, c: DebertaConfig):
        super().__init__()
        self.deberta = DebertaModel(c)
        self.pooler = ContextPooler(c)
        self.classifier = nn.Linear(c.hidden_size, 1)

    def forward(self, p: Packed) -> torch.Tensor:
        return self.classifier(self.pooler(pool(self.deberta(p), p, "cls")))


def build(directory: Path, cfg: dict[str, Any], arch: str, choice: RecipeChoice) -> dict[str, Any]:
    """ModelSpec fields for a DeBERTa-v2/v3 folder (registered in loader.ARCHITECTURES)."""
    refuse_for_encoder(choice, arch)
    c = DebertaConfig.from_hf(cfg)
    # Relative positions let DeBERTa-v3 run past max_position_embeddings; published rerankers are
    # documented at 512 tokens, which the tokenizer config normally states too.
    limits = [c.max_position_embeddings, tokenizer_max(directory)]
    fields: dict[str, Any] = dict(
        family="deberta",
        pad_id=int(cfg.get("pad_token_id") or 0),
        hidden_size=c.hidden_size,
        token_types=c.type_vocab_size > 0,
    )
    if arch.endswith("ForSequenceClassification"):
        require_one_label(cfg, arch)
        if int(cfg.get("pooler_hidden_size") or c.hidden_size) != c.hidden_size:
            raise ModelLoadError("pooler_hidden_size != hidden_size is not supported")
        return dict(
            fields,
            module=DebertaForSequenceClassification(c),
            kind="cross-encoder",
            pooling="cls",
            max_length=min(x for x in limits if x),
        )
    return dict(fields, **encoder_embedder(directory, DebertaModel(c), limits))


ARCHITECTURE_NAMES = ("DebertaV2ForSequenceClassification", "DebertaV2Model")
