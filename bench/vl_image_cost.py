"""What one image passage costs a VL reranker on this machine, against transformers in the same run.

Model shape (random weights, nothing to download): llama-nemotron-rerank-vl-1b-v2 as its parts
are published: a SigLIP so400m/16 vision tower at 512 px (width 1152, 27 layers, MLP 4304, 16
heads; assumed: the config is not in any registry here), pixel shuffle 0.5 (256 vectors per tile),
mlp1, and a Llama-3.2-1B-shaped bidirectional encoder (2048 wide, 16 layers, 32/8 heads).

Passages: a 300-token text passage; a 1-tile image passage (an image that fits one 512 px tile:
256 image tokens + ~30 text tokens); a scanned letter page (1700 x 2200 px, ``max_input_tiles`` 6 ->
6 tiles + thumbnail = 1,792 image tokens). rankserve runs through ``TorchRunner`` as the server does
(fp32 and the CPU's mixed bf16); the peer is transformers' ``SiglipVisionModel`` + ``LlamaModel``
(fp32, explicit all-visible mask) joined as the published code joins them. Best of ``--rounds``.

    python bench/vl_image_cost.py [--rounds 2] [--page]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of  # noqa: E402

from rankserve.engine.backends.cpu import available_cores  # noqa: E402
from rankserve.engine.backends.torch_runner import TorchRunner  # noqa: E402
from rankserve.engine.tokenize import Encoded  # noqa: E402
from rankserve.models.llama import LlamaConfig, rope_inv_freq  # noqa: E402
from rankserve.models.nemotron_vl import (  # noqa: E402
    NemotronVLForSequenceClassification,
    NemotronVLModel,
    TilePolicy,  # noqa: E402
    VisionInput,
)
from rankserve.models.siglip import SiglipConfig  # noqa: E402
from rankserve.models.spec import ModelSpec  # noqa: E402

VISION = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=512,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)
TEXT = dict(
    vocab_size=128266,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=131072,
)
CONTEXT_ID, IMG_START, IMG_END, BOS = 128265, 128263, 128264, 128000
TILE_TOKENS = 256


def peer_models() -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor]:
    """transformers SigLIP + Llama, mlp1 and score, built on meta and filled with small random values."""
    from transformers import LlamaConfig as HfLlama
    from transformers import LlamaModel, SiglipVisionConfig, SiglipVisionModel

    with torch.device("meta"):
        vision = SiglipVisionModel(SiglipVisionConfig(**VISION, vision_use_head=False))
        language = LlamaModel(HfLlama(**TEXT))
        wide = VISION["hidden_size"] * 4
        mlp1 = nn.Sequential(nn.LayerNorm(wide), nn.Linear(wide, 2048), nn.GELU(), nn.Linear(2048, 2048))
    gen = torch.Generator().manual_seed(0)
    for module in (vision, language, mlp1):
        module.to_empty(device="cpu").eval().requires_grad_(False)
        for p in module.parameters():
            p.normal_(0.0 if p.dim() > 1 else 1.0, 0.02, generator=gen)
    for m in vision.modules():  # buffers built on meta hold garbage after to_empty: refill them
        if isinstance(getattr(m, "position_ids", None), torch.Tensor):
            m.position_ids.copy_(torch.arange(m.position_ids.shape[-1]).expand_as(m.position_ids))
    if hasattr(language, "rotary_emb"):
        language.rotary_emb = type(language.rotary_emb)(language.config)
    return vision, language, mlp1, torch.randn(1, 2048, generator=gen) * 0.02


def ours_from(vision: nn.Module, language: nn.Module, mlp1: nn.Module, score: torch.Tensor) -> nn.Module:
    """rankserve's module sharing the peer's weights (no copy)."""
    vc = SiglipConfig.from_hf(VISION)
    with torch.device("meta"):
        model = NemotronVLForSequenceClassification(
            NemotronVLModel(vc, LlamaConfig.from_hf({**TEXT, "model_type": "llama"}), 0.5, CONTEXT_ID), "mean"
        )
    state = {f"model.vision_model.{k.removeprefix('vision_model.')}": v for k, v in vision.state_dict().items()}
    state.update({f"model.mlp1.{k}": v for k, v in mlp1.state_dict().items()})
    state.update({f"model.language_model.{k}": v for k, v in language.state_dict().items() if "rotary" not in k})
    state["score.weight"] = score
    model.load_state_dict(state, strict=True, assign=True)
    model.model.language_model.inv_freq = rope_inv_freq(model.model.language_model.config)  # was built on meta
    return model.eval()


def spec_of(module: nn.Module) -> ModelSpec:
    return ModelSpec(
        module=module,
        kind="cross-encoder",
        family="nemotron-vl",
        architecture="bench",
        tokenizer_file=Path("unused"),
        max_length=8192,
        pad_id=0,
        pooling="mean",
        vision=VisionInput(TilePolicy(size=512, max_tiles=6), TILE_TOKENS),
    )


def passage(tiles: int, text_tokens: int, gen: torch.Generator) -> Encoded:
    """BOS, the image's tokens (if any), then text ids; pixels for ``tiles`` tiles."""
    text = torch.randint(1000, 100000, (text_tokens,), generator=gen).tolist()
    if not tiles:
        return Encoded([BOS] + text, None)
    ids = [BOS, IMG_START] + [CONTEXT_ID] * (tiles * TILE_TOKENS) + [IMG_END] + text
    return Encoded(ids, None, torch.randint(0, 256, (tiles, 3, 512, 512), dtype=torch.uint8, generator=gen))


@torch.inference_mode()
def peer_logit(models, item: Encoded) -> float:
    vision, language, mlp1, score = models
    ids = torch.tensor(item.ids)
    x = language.embed_tokens(ids)
    if item.pixels is not None:
        pixels = (item.pixels.float() / 255 - 0.5) / 0.5  # SigLIP's normalization, as the processor does
        vit = vision(pixel_values=pixels).last_hidden_state  # [T, 1024, 1152]
        n, side = vit.shape[0], int(vit.shape[1] ** 0.5)
        v = vit.reshape(n, side, side, -1).view(n, side, side // 2, -1).permute(0, 2, 1, 3).contiguous()
        v = v.view(n, side // 2, side // 2, -1).permute(0, 2, 1, 3).contiguous()
        x[ids == CONTEXT_ID] = mlp1(v.reshape(-1, v.shape[-1]))
    mask = torch.zeros(1, 1, len(ids), len(ids))
    hidden = language(inputs_embeds=x[None], attention_mask=mask).last_hidden_state[0]
    return float(hidden.mean(0) @ score[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--page", action="store_true", help="also time a 1700 x 2200 page (7 tiles; minutes on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(available_cores())
    t0 = time.perf_counter()
    peer = peer_models()
    fp32 = TorchRunner(spec_of(ours_from(*peer)), torch.device("cpu"), dtype="float32")
    mixed = TorchRunner(spec_of(ours_from(*peer)), torch.device("cpu"), dtype="auto")  # bf16 copies its own weights
    print(
        f"built in {time.perf_counter() - t0:.0f} s; {available_cores()} threads; rankserve auto precision: "
        f"{mixed.precision}; cpu gemm {fp32.gemm}"
    )
    gen = torch.Generator().manual_seed(1)
    page_tiles = TilePolicy(size=512, max_tiles=6).tile_count(1700, 2200)
    cases = [
        ("text passage, 300 tokens", passage(0, 300, gen)),
        ("image passage, 1 tile (+30 text tokens)", passage(1, 30, gen)),
    ]
    if args.page:
        cases.append((f"letter page 1700x2200, {page_tiles} tiles", passage(page_tiles, 30, gen)))
    print(
        "| passage | tokens | transformers fp32 s | rankserve fp32 s | vs transformers | rankserve "
        f"{mixed.precision} s | vs transformers | max abs logit diff (fp32) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, item in cases:
        rounds = 1 if item.pixels is not None and item.pixels.shape[0] > 1 else args.rounds
        t_peer, ref = best_of(lambda: peer_logit(peer, item), rounds)
        t_ours, got = best_of(lambda: fp32.forward([item]), rounds)
        t_mixed, _ = best_of(lambda: mixed.forward([item]), rounds)
        print(
            f"| {name} | {len(item)} | {t_peer:.2f} | {t_ours:.2f} | {t_peer / t_ours:.2f}x | {t_mixed:.2f} | "
            f"{t_peer / t_mixed:.2f}x | {abs(float(got[0]) - ref):.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
