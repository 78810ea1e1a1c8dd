"""ModernBERT encoders: cross-encoders (gte-reranker-modernbert-base) and embedders, up to 8192 tokens.

What differs from BERT: RoPE instead of learned positions, with a different base for global
(160,000) and local (10,000) layers; attention alternates between global layers (every
``global_attn_every_n_layers``-th, from the first) and local ones where a token sees only keys
within ``local_attention / 2`` positions either side; GeGLU MLPs with one fused input projection
(``Wi`` -> input, gate); pre-norm LayerNorms without biases (the first layer's attention norm is
the identity: the embeddings are already normalized); a fused ``Wqkv``. The classifier head pools
(``classifier_pooling`` cls or mean), then dense -> GELU -> LayerNorm -> one-logit ``classifier``.

Attribute names equal the Hugging Face keys (``model.embeddings.tok_embeddings``,
``model.layers.N.attn.Wqkv``, ``mlp.Wi``, ``model.final_norm``, ``head.dense``, ``classifier``).
Both config formats load: transformers 4.x (``global_rope_theta``, ``local_rope_theta``,
``global_attn_every_n_layers``) and 5.x (``rope_parameters`` per layer type, ``layer_types``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankserve.models.attention import packed_attention
from rankserve.models.batch import Packed
from rankserve.models.llama import apply_rope, default_inv_freq, rope_cos_sin
from rankserve.models.model_dir import require_one_label, tokenizer_max
from rankserve.models.pooling import encoder_embedder, normalize_pooling, pool
from rankserve.models.recipes import RecipeChoice, refuse_for_encoder
from rankserve.models.rows import by_rows

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}


@dataclass(frozen=True, kw_only=True)
class ModernBertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    global_layers: tuple[bool, ...]  # per layer: full attention (True) or the local window
    window: int = 64  # local layers: keys within this many positions either side
    global_theta: float = 160_000.0
    local_theta: float = 10_000.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    activation: str = "gelu"
    classifier_activation: str = "gelu"
    classifier_bias: bool = False
    max_position_embeddings: int = 8192

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModernBertConfig:
        layers = cfg["num_hidden_layers"]
        types = cfg.get("layer_types")
        if types:
            global_layers = tuple(t == "full_attention" for t in types)
        else:
            every = int(cfg.get("global_attn_every_n_layers", 3))
            global_layers = tuple(i % every == 0 for i in range(layers))
        rope = cfg.get("rope_parameters") or {}
        global_theta = (rope.get("full_attention") or {}).get("rope_theta", cfg.get("global_rope_theta", 160_000.0))
        local_theta = (rope.get("sliding_attention") or {}).get("rope_theta", cfg.get("local_rope_theta"))
        for kind in ("full_attention", "sliding_attention"):
            rope_type = (rope.get(kind) or {}).get("rope_type", "default")
            if rope_type != "default":
                raise ValueError(f"ModernBERT rope type {rope_type!r} is not supported (default only)")
        for key in ("hidden_activation", "classifier_activation"):
            if cfg.get(key, "gelu") not in ACTIVATIONS:
                raise ValueError(f"{key} {cfg[key]!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ValueError("hidden_size is not a multiple of num_attention_heads")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=cfg["num_attention_heads"],
            global_layers=global_layers,
            window=int(cfg.get("local_attention", 128)) // 2,
            global_theta=float(global_theta),
            local_theta=float(local_theta if local_theta is not None else global_theta),
            norm_eps=float(cfg.get("norm_eps", 1e-5)),
            norm_bias=bool(cfg.get("norm_bias", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            activation=cfg.get("hidden_activation", "gelu"),
            classifier_activation=cfg.get("classifier_activation", "gelu"),
            classifier_bias=bool(cfg.get("classifier_bias", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
        )


class Embeddings(nn.Module):
    def __init__(self, c: ModernBertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(ids))


class Attention(nn.Module):
    def __init__(self, c: ModernBertConfig, is_global: bool):
        super().__init__()
        self.Wqkv = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=c.attention_bias)
        self.Wo = nn.Linear(c.hidden_size, c.hidden_size, bias=c.attention_bias)
        self.heads, self.head_dim = c.num_attention_heads, c.head_dim
        self.window = 0 if is_global else c.window

    def forward(self, x: torch.Tensor, p: Packed, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.Wqkv(x).view(n, 3, self.heads, self.head_dim).unbind(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = packed_attention(
            q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1), p, self.heads, self.heads, window=self.window
        )
        return self.Wo(out)


class MLP(nn.Module):
    """GeGLU: Wo(act(input) * gate), input and gate from one fused projection ``Wi``."""

    def __init__(self, c: ModernBertConfig):
        super().__init__()
        self.Wi = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        self.Wo = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = ACTIVATIONS[c.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.act(inp) * gate)


class Layer(nn.Module):
    def __init__(self, c: ModernBertConfig, index: int):
        super().__init__()
        self.attn_norm = nn.Identity() if index == 0 else nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)
        self.attn = Attention(c, c.global_layers[index])
        self.mlp_norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)
        self.mlp = MLP(c)
        self.is_global = c.global_layers[index]

    def forward(self, x: torch.Tensor, p: Packed, rope: dict[bool, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), p, *rope[self.is_global])
        return by_rows(lambda h: h + self.mlp(self.mlp_norm(h)), x)


class ModernBertModel(nn.Module):
    """Packed ids -> packed last hidden states [N, H] (after ``final_norm``)."""

    def __init__(self, c: ModernBertConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.layers = nn.ModuleList(Layer(c, i) for i in range(c.num_hidden_layers))
        self.final_norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)
        # plain attributes, not buffers: they stay float32 when the module is cast
        self.inv_freq = {
            True: default_inv_freq(c.head_dim, c.global_theta),
            False: default_inv_freq(c.head_dim, c.local_theta),
        }

    def forward(self, p: Packed) -> torch.Tensor:
        rope = {kind: rope_cos_sin(p.position_ids, f) for kind, f in self.inv_freq.items()}
        x = self.embeddings(p.input_ids)
        for layer in self.layers:
            x = layer(x, p, rope)
        return self.final_norm(x)


class Head(nn.Module):
    def __init__(self, c: ModernBertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size, bias=c.classifier_bias)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)
        self.act = ACTIVATIONS[c.classifier_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class ModernBertForSequenceClassification(nn.Module):
    """Pooled (cls | mean) final states -> head -> ``classifier`` [B, 1]."""

    def __init__(self, c: ModernBertConfig, pooling: str):
        super().__init__()
        self.model = ModernBertModel(c)
        self.head = Head(c)
        self.classifier = nn.Linear(c.hidden_size, 1)
        self.pooling = pooling

    def forward(self, p: Packed) -> torch.Tensor:
        return self.classifier(self.head(pool(self.model(p), p, self.pooling)))


def build(directory: Path, cfg: dict[str, Any], arch: str, choice: RecipeChoice) -> dict[str, Any]:
    """ModelSpec fields for a ModernBERT folder (registered in loader.ARCHITECTURES)."""
    refuse_for_encoder(choice, arch)
    c = ModernBertConfig.from_hf(cfg)
    limits = [c.max_position_embeddings, tokenizer_max(directory)]
    fields: dict[str, Any] = dict(
        family="modernbert", pad_id=int(cfg.get("pad_token_id") or 0), hidden_size=c.hidden_size
    )
    if arch.endswith("ForSequenceClassification"):
        require_one_label(cfg, arch)
        pooling = normalize_pooling(str(cfg.get("classifier_pooling", "cls")))
        return dict(
            fields,
            module=ModernBertForSequenceClassification(c, pooling),
            kind="cross-encoder",
            pooling=pooling,
            max_length=min(x for x in limits if x),
        )
    return dict(fields, **encoder_embedder(directory, ModernBertModel(c), limits))


ARCHITECTURE_NAMES = ("ModernBertForSequenceClassification", "ModernBertModel")
