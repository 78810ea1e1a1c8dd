"""Tiny random VL rerankers in the published llama-nemotron-rerank-vl-1b-v2 layout, and the
reference that scores them from transformers pieces, run the way the published code runs them.

Layout: config.json with ``llm_config`` (a ``llama_bidirec`` Llama), ``vision_config``
(``siglip_vision_model``), ``img_context_token_id`` and the tiling fields; weights
``model.vision_model.*`` (SigLIP, no head), ``model.mlp1.{0,1,3}.*``, ``model.language_model.*``
and ``score.weight``; a tokenizer holding ``<img>``, ``</img>`` and ``<IMG_CONTEXT>``.
Sizes: 32-pixel tiles of 4-pixel patches (an 8 x 8 grid, 16 image vectors per tile after the
pixel shuffle), vision width 32, Llama hidden 64.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch
from llama_checkpoints import hf_config, llama_tokenizer, tiny_config
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer
from torch import nn

from rankserve.engine.images import image_tiles
from rankserve.models.loader import load_model

IMG_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")
QUERY = "how do i list files"
TILE, PATCH = 32, 4
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=TILE,
    patch_size=PATCH,
    num_channels=3,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    model_type="siglip_vision_model",
)


def vl_tokenizer(directory: Path) -> int:
    """The tiny Llama tokenizer plus the three image tokens (special); -> the IMG_CONTEXT id."""
    llama_tokenizer(directory)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMG_TOKENS])
    tok.save(str(directory / "tokenizer.json"))
    return tok.token_to_id("<IMG_CONTEXT>")


def make_vl_reranker(
    directory: Path, *, seed: int = 0, max_tiles: int = 4, temperature: float = 2.0, thumbnail: bool = True
) -> Path:
    from transformers import LlamaModel, SiglipVisionConfig, SiglipVisionModel

    directory.mkdir(parents=True, exist_ok=True)
    context_id = vl_tokenizer(directory)
    llm = tiny_config("llama")
    torch.manual_seed(seed)
    vision = SiglipVisionModel(
        SiglipVisionConfig(**{k: v for k, v in VISION.items() if k != "model_type"}, vision_use_head=False)
    ).eval()
    language = LlamaModel(hf_config({**llm, "model_type": "llama"})).eval()
    wide, hidden = VISION["hidden_size"] * 4, llm["hidden_size"]
    mlp1 = nn.Sequential(nn.LayerNorm(wide), nn.Linear(wide, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    for p in mlp1.parameters():  # LayerNorm starts at 1/0: make it count
        nn.init.normal_(p, std=0.3) if p.dim() > 1 else nn.init.normal_(p, mean=0.5, std=0.3)
    state = {f"model.vision_model.{k.removeprefix('vision_model.')}": v for k, v in vision.state_dict().items()}
    state.update({f"model.mlp1.{k}": v for k, v in mlp1.state_dict().items()})
    state.update({f"model.language_model.{k}": v for k, v in language.state_dict().items()})
    state["score.weight"] = torch.randn(1, hidden) * 0.3
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    cfg = {
        "architectures": ["LlamaNemotronVLForSequenceClassification"],
        "model_type": "llama_nemotron_vl_rerank",
        "auto_map": {
            "AutoModelForSequenceClassification": "modeling_llama_nemotron_vl.LlamaNemotronVLForSequenceClassification"
        },
        "llm_config": {**llm, "architectures": ["LlamaBidirectionalModel"], "model_type": "llama_bidirec"},
        "vision_config": VISION,
        "img_context_token_id": context_id,
        "downsample_ratio": 0.5,
        "force_image_size": TILE,
        "ps_version": "v2",
        "use_thumbnail": thumbnail,
        "max_input_tiles": max_tiles,
        "pooling": "avg",
        "temperature": temperature,
        "id2label": {"0": "LABEL_0"},
    }
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory


class Reference:
    """The published forward pass from transformers modules: SigLIP -> pixel shuffle (v2) -> mlp1 ->
    image vectors at the IMG_CONTEXT positions -> bidirectional LlamaModel (an explicit 4-D
    all-visible mask) -> mean over the mask -> score / temperature."""

    def __init__(self, directory: Path):
        from transformers import LlamaModel, SiglipVisionConfig, SiglipVisionModel

        cfg = json.loads((directory / "config.json").read_text())
        state = load_file(str(directory / "model.safetensors"))
        vision_cfg = {k: v for k, v in cfg["vision_config"].items() if k != "model_type"}
        self.vision = SiglipVisionModel(SiglipVisionConfig(**vision_cfg, vision_use_head=False)).eval()
        inner = "vision_model." if next(iter(self.vision.state_dict())).startswith("vision_model.") else ""
        self.vision.load_state_dict(
            {
                inner + k.removeprefix("model.vision_model."): v
                for k, v in state.items()
                if k.startswith("model.vision_model.")
            }
        )
        wide, hidden = vision_cfg["hidden_size"] * 4, cfg["llm_config"]["hidden_size"]
        self.mlp1 = nn.Sequential(nn.LayerNorm(wide), nn.Linear(wide, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.mlp1.load_state_dict(
            {k.removeprefix("model.mlp1."): v for k, v in state.items() if k.startswith("model.mlp1.")}
        )
        self.language = LlamaModel(hf_config({**cfg["llm_config"], "model_type": "llama"})).eval()
        self.language.load_state_dict(
            {
                k.removeprefix("model.language_model."): v
                for k, v in state.items()
                if k.startswith("model.language_model.")
            }
        )
        self.score = state["score.weight"]
        self.context_id = cfg["img_context_token_id"]
        self.temperature = cfg["temperature"]

    @staticmethod
    def pixel_shuffle(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale), int(c / scale))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
        return x.permute(0, 2, 1, 3).contiguous()

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        vit = self.vision(pixel_values=pixels).last_hidden_state
        side = int(vit.shape[1] ** 0.5)
        vit = self.pixel_shuffle(vit.reshape(vit.shape[0], side, side, -1))
        return self.mlp1(vit.reshape(vit.shape[0], -1, vit.shape[-1]))  # [T, 16, H]

    @torch.inference_mode()
    def logits(self, ids: list[list[int]], pixels: list[torch.Tensor | None]) -> torch.Tensor:
        """One logit per sequence; ``pixels[i]`` the tiles of sequence i's image (or None)."""
        embeds = []
        for seq, px in zip(ids, pixels):
            x = self.language.embed_tokens(torch.tensor(seq))
            if px is not None:
                x[torch.tensor(seq) == self.context_id] = self.features(px).reshape(-1, x.shape[-1])
            embeds.append(x)
        width = max(len(s) for s in ids)
        batch = torch.zeros(len(ids), width, embeds[0].shape[-1])
        real = torch.zeros(len(ids), width, dtype=torch.bool)
        for i, x in enumerate(embeds):
            batch[i, : len(x)], real[i, : len(x)] = x, True
        mask = torch.zeros(len(ids), 1, width, width).masked_fill_(
            ~real[:, None, None, :], torch.finfo(torch.float32).min
        )
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        hidden = self.language(inputs_embeds=batch, attention_mask=mask, position_ids=positions).last_hidden_state
        pooled = (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        return (pooled @ self.score.T)[:, 0] / self.temperature


def picture(width: int, height: int, seed: int) -> str:
    """A random-noise PNG as a data URL."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def reference_scores(directory: Path, texts: list[str], images: list[str | None], query: str = QUERY) -> torch.Tensor:
    """Sequences built as the published processor does: ``<img>`` + IMG_CONTEXT x (tiles x 16) +
    ``</img> `` before the prompt when there is an image, tokenized whole (the tokenizer adds BOS)."""
    spec = load_model(directory)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids, pixels = [], []
    for text, image in zip(texts, images):
        tiles = None if image is None else image_tiles(image, "x", spec.vision.tiles, 1 << 24, 1 << 26)
        px = None if tiles is None else (tiles.float() / 255 - 0.5) / 0.5  # SigLIP's normalization
        prefix = "" if px is None else "<img>" + "<IMG_CONTEXT>" * (px.shape[0] * 16) + "</img> "
        ids.append(tok.encode(f"{prefix}question:{query} \n \n passage:{text}").ids)
        pixels.append(px)
    return Reference(directory).logits(ids, pixels)
