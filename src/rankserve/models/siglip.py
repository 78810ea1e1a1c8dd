"""SigLIP's vision transformer (no pooling head): image tiles in, one vector per patch out.

The vision tower of NVIDIA's VL retrievers (``models/nemotron_vl.py``). A tile of S x S pixels is
cut into (S/p)^2 patches by a stride-p convolution, a learned position embedding is added, then
pre-LayerNorm transformer layers (full attention, tanh-GELU MLP) and a final LayerNorm
(``post_layernorm``). Attribute names equal the checkpoint keys under ``vision_model.``
(``embeddings.patch_embedding``, ``encoder.layers.N.self_attn.q_proj``, ``mlp.fc1``, ...).

Every tile has the same number of patches, so attention needs no mask and no packing: linears run
on [tiles * patches, C] rows (2-D, as the CPU GEMM wrappers expect), attention on [tiles, heads,
patches, head_dim].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}  # hidden_act -> F.gelu's approximate


@dataclass(frozen=True, kw_only=True)
class SiglipConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    gelu: str = "tanh"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> SiglipConfig:
        act = cfg.get("hidden_act", "gelu_pytorch_tanh")
        if act not in ACTIVATIONS:
            raise ValueError(f"vision hidden_act {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            image_size=cfg["image_size"],
            patch_size=cfg["patch_size"],
            num_channels=cfg.get("num_channels", 3),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
            gelu=ACTIVATIONS[act],
        )

    @property
    def grid(self) -> int:
        """Patches per side of a tile."""
        return self.image_size // self.patch_size


class Embeddings(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(c.grid**2, c.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [T, 3, S, S] -> [T, P, C]
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        return x + self.position_embedding.weight


class Attention(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(c.hidden_size, c.hidden_size) for _ in range(4)
        )

    def forward(self, x: torch.Tensor, tiles: int) -> torch.Tensor:  # [T*P, C] -> [T*P, C]
        rows, width = x.shape
        patches = rows // tiles

        def heads(y: torch.Tensor) -> torch.Tensor:  # [T*P, C] -> [T, h, P, d]
            return y.view(tiles, patches, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(rows, width))


class MLP(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.gelu = c.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.gelu))


class EncoderLayer(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.self_attn = Attention(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, tiles: int) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), tiles)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_hidden_layers))


class SiglipVisionModel(nn.Module):
    """Tiles [T, 3, S, S] (normalized pixels) -> last hidden states after ``post_layernorm`` [T, P, C]."""

    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        tiles, patches, width = x.shape
        x = x.reshape(tiles * patches, width)
        for layer in self.encoder.layers:
            x = layer(x, tiles)
        return self.post_layernorm(x).view(tiles, patches, width)
