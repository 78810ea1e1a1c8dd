"""BERT-family encoders (BERT, MiniLM, XLM-RoBERTa / RoBERTa) and their heads.

Attribute names equal the Hugging Face safetensors keys (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ...), so loading is a strict ``load_state_dict``.
Linear layers and the MLP run on packed real tokens; attention re-pads (see ``attention.py``); the
MLP runs on slices of rows on CPU (see ``rows.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankserve.models.attention import packed_attention
from rankserve.models.batch import Packed
from rankserve.models.pooling import pool
from rankserve.models.rows import by_rows

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    # RoBERTa/XLM-R number positions from pad_token_id + 1 (HF's create_position_ids_from_input_ids).
    position_offset: int = 0

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], roberta: bool) -> BertConfig:
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {cfg['position_embedding_type']!r} is not supported")
        if cfg.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported: {sorted(ACTIVATIONS)}")
        pad = cfg.get("pad_token_id", 1 if roberta else 0)
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_position_embeddings=cfg["max_position_embeddings"],
            type_vocab_size=cfg.get("type_vocab_size", 2),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            hidden_act=cfg.get("hidden_act", "gelu"),
            pad_token_id=pad,
            position_offset=pad + 1 if roberta else 0,
        )

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table allows."""
        return self.max_position_embeddings - self.position_offset


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.position_offset = c.position_offset

    def forward(self, p: Packed) -> torch.Tensor:  # -> [N, H]
        types = p.token_type_ids if p.token_type_ids is not None else torch.zeros_like(p.input_ids)
        x = (
            self.word_embeddings(p.input_ids)
            + self.position_embeddings(p.position_ids + self.position_offset)
            + self.token_type_embeddings(types)
        )
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.num_heads = c.num_attention_heads

    def forward(self, x: torch.Tensor, p: Packed) -> torch.Tensor:
        return packed_attention(self.query(x), self.key(x), self.value(x), p, self.num_heads, self.num_heads)


class DenseNorm(nn.Module):
    """dense -> residual add -> LayerNorm (BERT's "output" blocks)."""

    def __init__(self, c: BertConfig, fan_in: int):
        super().__init__()
        self.dense = nn.Linear(fan_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c, c.hidden_size)

    def forward(self, x: torch.Tensor, p: Packed) -> torch.Tensor:
        return self.output(self.self(x, p), x)


class Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c, c.intermediate_size)

    def forward(self, x: torch.Tensor, p: Packed) -> torch.Tensor:  # [N, H] -> [N, H]
        x = self.attention(x, p)
        return by_rows(lambda h: self.output(self.intermediate(h), h), x)


class Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))

    def forward(self, x: torch.Tensor, p: Packed) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, p)
        return x


class BertModel(nn.Module):
    """The encoder stack: packed ids -> packed last hidden states [N, H]."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)

    def forward(self, p: Packed) -> torch.Tensor:
        return self.encoder(self.embeddings(p), p)


class BertPooler(nn.Module):
    """BERT's pooler: tanh(dense(CLS))."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls))


class RobertaClassificationHead(nn.Module):
    """XLM-R's head: out_proj(tanh(dense(CLS)))."""

    def __init__(self, c: BertConfig, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.out_proj = nn.Linear(c.hidden_size, num_labels)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(cls)))


class BertForSequenceClassification(nn.Module):
    """Cross-encoder: [CLS] q [SEP] p [SEP] -> one logit per pair. Keys ``bert.*``, ``classifier``."""

    def __init__(self, c: BertConfig, num_labels: int = 1):
        super().__init__()
        self.bert = BertModel(c)
        self.bert.pooler = BertPooler(c)
        self.classifier = nn.Linear(c.hidden_size, num_labels)

    def forward(self, p: Packed) -> torch.Tensor:  # -> [B, num_labels]
        cls = pool(self.bert(p), p, "cls")
        return self.classifier(self.bert.pooler(cls))


class XLMRobertaForSequenceClassification(nn.Module):
    """Cross-encoder with XLM-R's head. Keys ``roberta.*``, ``classifier.dense``, ``classifier.out_proj``."""

    def __init__(self, c: BertConfig, num_labels: int = 1):
        super().__init__()
        self.roberta = BertModel(c)
        self.classifier = RobertaClassificationHead(c, num_labels)

    def forward(self, p: Packed) -> torch.Tensor:
        return self.classifier(pool(self.roberta(p), p, "cls"))
