"""NVIDIA's VL reranker (llama-nemotron-rerank-vl-1b-v2): text queries against image, text and
image+text passages, from its config.json and safetensors alone (no remote code).

The parts, with the checkpoint's key names (the reranker puts all but the head under ``model.``):

- ``vision_model``: SigLIP's vision transformer (``models/siglip.py``), one S x S tile at a time
  (tiles cut by ``engine/images.py``, scaled to [0, 1] and normalized with mean = std = 0.5 here),
  last hidden state after ``post_layernorm``;
- pixel shuffle (``ps_version`` "v2", ratio ``downsample_ratio`` 0.5): each 2 x 2 block of patch
  vectors becomes one vector of 4C, so a 512-pixel tile with 16-pixel patches gives 256 vectors;
- ``mlp1``: LayerNorm(4C) -> Linear(4C, H) -> GELU -> Linear(H, H) (indices 0, 1, 3);
- ``language_model``: the bidirectional Llama rankserve already serves (``models/llama.py``); the
  image vectors replace the token embeddings at the ``<IMG_CONTEXT>`` positions;
- mean pooling over all real tokens, ``score`` (no bias), divided by ``temperature`` (runner).

The sequence for one passage is ``<image> question:{query} \\n \\n passage:{text}``, where
``<image>`` (present only when the passage has an image) becomes ``<img>``, one ``<IMG_CONTEXT>``
per image vector, ``</img>``; the tokenizer adds its BOS. ``VisionInput`` carries what the engine
needs to build that sequence; the tiles travel in ``Packed.images``, in the batch's row order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer
from torch import nn

from rankserve.errors import ModelLoadError
from rankserve.models import llama
from rankserve.models.batch import Packed
from rankserve.models.model_dir import read_json, require_one_label
from rankserve.models.pooling import normalize_pooling, pool
from rankserve.models.recipes import RecipeChoice, refuse_for_encoder
from rankserve.models.siglip import SiglipConfig, SiglipVisionModel

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
PIXEL_MEAN = PIXEL_STD = 0.5  # SigLIP's normalization of [0, 1] pixels, every channel
DEFAULT_MAX_TILES = 6
ARCHITECTURE_NAMES = ("LlamaNemotronVLForSequenceClassification",)
SIZE_FACTOR_CAP = 0.6  # more tiles stop paying once they hold 0.6x the image's pixels


@dataclass(frozen=True)
class TilePolicy:
    """How a model cuts an image (from its config): tile side ``size``, tile count bounds, thumbnail."""

    size: int
    max_tiles: int
    min_tiles: int = 1
    use_thumbnail: bool = True

    def ratios(self) -> list[tuple[int, int]]:
        """Candidate (cols, rows) grids, sorted by tile count (ties in the published code's order)."""
        lo, hi = self.min_tiles, self.max_tiles
        grids = {
            (i, j) for n in range(lo, hi + 1) for i in range(1, n + 1) for j in range(1, n + 1) if lo <= i * j <= hi
        }
        return sorted(grids, key=lambda g: g[0] * g[1])

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """The (cols, rows) grid an image of ``width`` x ``height`` is cut into."""
        aspect = width / height
        best, best_factor = (1, 1), float("-inf")
        for cols, rows in self.ratios():
            size_factor = min(cols * rows * self.size * self.size / (width * height), SIZE_FACTOR_CAP)
            closeness = min((cols / rows) / aspect, aspect / (cols / rows))
            if size_factor * closeness > best_factor:
                best, best_factor = (cols, rows), size_factor * closeness
        return best

    def tile_count(self, width: int, height: int) -> int:
        cols, rows = self.grid(width, height)
        return cols * rows + (1 if self.use_thumbnail and cols * rows > 1 else 0)

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """The RGB ``image`` cut into S x S tiles, row-major, plus the thumbnail when due."""
        s = self.size
        cols, rows = self.grid(*image.size)
        resized = image.resize((cols * s, rows * s), Image.Resampling.BICUBIC)
        out = [resized.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
        if self.use_thumbnail and len(out) > 1:
            out.append(image.resize((s, s), Image.Resampling.BICUBIC))
        return out


@dataclass(frozen=True)
class VisionInput:
    """What the engine needs to turn an image passage into tokens and tiles."""

    tiles: TilePolicy
    tokens_per_tile: int

    def image_text(self, tiles: int) -> str:
        """The text ``<image>`` stands for, for an image cut into ``tiles`` tiles."""
        return IMG_START + IMG_CONTEXT * (tiles * self.tokens_per_tile) + IMG_END


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """[T, h, w, C] -> [T, w*r, h*r, C/r^2] as the published code's "v2" (two view/permute rounds)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, int(w * ratio), int(c / ratio)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(w * ratio), int(h * ratio), int(c / (ratio * ratio)))
    return x.permute(0, 2, 1, 3).contiguous()


class NemotronVLModel(nn.Module):
    """Vision tower + projector + bidirectional Llama: packed ids and tiles -> [N, H] hidden states."""

    def __init__(self, vision: SiglipConfig, text: llama.LlamaConfig, ratio: float, context_id: int):
        super().__init__()
        wide = vision.hidden_size * int(round(1 / ratio)) ** 2
        self.vision_model = SiglipVisionModel(vision)
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(wide),
            nn.Linear(wide, text.hidden_size),
            nn.GELU(),
            nn.Linear(text.hidden_size, text.hidden_size),
        )
        self.language_model = llama.LlamaModel(text)
        self.ratio = ratio
        self.context_id = context_id

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[T, 3, S, S] uint8 RGB tiles -> [T * tokens_per_tile, H]."""
        normalized = (pixels.to(torch.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD
        patches = self.vision_model(normalized)  # [T, P, C]
        side = int(round(patches.shape[1] ** 0.5))
        shuffled = pixel_shuffle(patches.reshape(patches.shape[0], side, side, -1), self.ratio)
        rows = shuffled.reshape(-1, shuffled.shape[-1])  # 2-D for the CPU GEMM wrappers
        return self.mlp1(rows)

    def forward(self, p: Packed) -> torch.Tensor:
        x = self.language_model.embed_tokens(p.input_ids)
        slots = p.input_ids == self.context_id
        if p.images is not None:
            features = self.image_features(p.images)
            if features.shape[0] != int(slots.sum()):
                raise RuntimeError(f"{features.shape[0]} image vectors for {int(slots.sum())} {IMG_CONTEXT} tokens")
            x = x.masked_scatter(slots.unsqueeze(-1), features.to(x.dtype))
        elif bool(slots.any()):
            raise RuntimeError(f"{IMG_CONTEXT} tokens without an image")
        return self.language_model(p, embeds=x)


class NemotronVLForSequenceClassification(nn.Module):
    """Keys ``model.*`` + ``score.weight``; raw logits [B, 1] (the runner divides by temperature)."""

    def __init__(self, model: NemotronVLModel, pooling: str):
        super().__init__()
        self.model = model
        self.score = nn.Linear(model.language_model.config.hidden_size, 1, bias=False)
        self.pooling = pooling

    def forward(self, p: Packed) -> torch.Tensor:
        return self.score(pool(self.model(p), p, self.pooling))


def _token_id(tokenizer: Tokenizer, token: str, directory: Path) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ModelLoadError(
            f"{directory / 'tokenizer.json'} has no {token} token; a VL model's tokenizer needs "
            f"{IMG_START}, {IMG_END} and {IMG_CONTEXT}"
        )
    return found


def build(directory: Path, cfg: dict[str, Any], arch: str, choice: RecipeChoice = RecipeChoice()) -> dict[str, Any]:
    """ModelSpec fields for a ``LlamaNemotronVLForSequenceClassification`` folder."""
    refuse_for_encoder(choice, arch)
    require_one_label(cfg, arch)
    text_cfg, vision_cfg = cfg.get("llm_config"), cfg.get("vision_config")
    if not isinstance(text_cfg, dict) or not isinstance(vision_cfg, dict):
        raise ModelLoadError(f"{arch}: config.json needs llm_config and vision_config objects")
    if vision_cfg.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise ModelLoadError(f"{arch}: vision model {vision_cfg.get('model_type')!r} is not supported (SigLIP only)")
    ps_version = cfg.get("ps_version", "v2")
    if ps_version != "v2":
        raise ModelLoadError(f"{arch}: ps_version {ps_version!r} is not supported (v2 only)")
    size = int(cfg.get("force_image_size") or vision_cfg["image_size"])
    vision = SiglipConfig.from_hf({**vision_cfg, "image_size": size})
    ratio = float(cfg.get("downsample_ratio", 0.5))
    if vision.grid * ratio != int(vision.grid * ratio) or round(1 / ratio) * ratio != 1:
        raise ModelLoadError(f"{arch}: downsample_ratio {ratio} does not divide the {vision.grid}-patch grid")
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    context_id = _token_id(tokenizer, IMG_CONTEXT, directory)
    for token in (IMG_START, IMG_END):
        _token_id(tokenizer, token, directory)
    if cfg.get("img_context_token_id", context_id) != context_id:
        raise ModelLoadError(
            f"{arch}: img_context_token_id {cfg['img_context_token_id']} is not the tokenizer's "
            f"{IMG_CONTEXT} ({context_id})"
        )
    text = llama.LlamaConfig.from_hf(text_cfg, causal=False)
    processor = read_json(directory / "processor_config.json") or {}
    tiles = TilePolicy(
        size=size,
        max_tiles=int(cfg.get("max_input_tiles") or processor.get("max_input_tiles") or DEFAULT_MAX_TILES),
        min_tiles=int(cfg.get("min_input_tiles") or processor.get("min_input_tiles") or 1),
        use_thumbnail=bool(cfg.get("use_thumbnail", True)),
    )
    pooling = normalize_pooling(str(cfg.get("pooling", "avg")))
    template = choice.template or cfg.get("prompt_template")
    if not (isinstance(template, str) and "{query}" in template and "{passage}" in template):
        template = llama.NVIDIA_RERANK_TEMPLATE
    limits = llama.length_limits(text, "llama", directory, cfg.get("max_length") or text_cfg.get("max_length"))
    model = NemotronVLModel(vision, text, ratio, context_id)
    return dict(
        module=NemotronVLForSequenceClassification(model, pooling),
        kind="cross-encoder",
        family="nemotron-vl",
        max_length=min(x for x in limits if x),
        pad_id=llama._pad_id(text_cfg),
        pooling=pooling,
        temperature=llama.config_temperature(cfg),
        rerank_template=template,
        hidden_size=text.hidden_size,
        vision=VisionInput(tiles, int(vision.grid * ratio) ** 2),
    )
