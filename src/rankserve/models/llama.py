"""Llama-family decoder stacks (Llama, Mistral, Qwen2, Qwen3, Gemma), as encoders or causally.

NVIDIA's rerankers (llama-3.2-nv-rerankqa-1b-v2, nemoretriever-500m-rerank-v2, nv-rerankqa-mistral-4b-v3)
and embedder (llama-3.2-nv-embedqa-1b-v2) are plain Llama / Mistral layers whose attention sees every
real token (padding mask only, no causal triangle). Their last hidden states are pooled (``avg``
by default) and, for rerankers, scored by ``score = Linear(hidden, 1, bias=False)``.

Attribute names equal the Hugging Face safetensors keys (``model.embed_tokens``,
``model.layers.N.self_attn.q_proj``, ``mlp.gate_proj``, ``model.norm``, ``score``), so loading is a
strict ``load_state_dict``. Linear layers, RoPE and the MLP run on packed real tokens; attention
re-pads inside ``packed_attention``, the one call site. RMSNorm and RoPE compute in float32.
Mistral differs from Llama only in config values here; its ``sliding_window`` is ignored (see
``LlamaConfig.from_hf``). ``causal=True`` serves ordinary causal weights from the same code.

The other families are switches on the same layers, set from ``model_type``: Qwen2 adds biases to
q/k/v; Qwen3 RMS-normalizes each head's q and k before RoPE; Gemma uses GeGLU (tanh GELU), scales
the embeddings by sqrt(hidden) and its RMSNorm multiplies by (1 + weight) in float32. Decoder
rerankers that answer yes/no (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2) are these
stacks with a one-logit head cut from the LM head: ``models/recipes.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankserve.errors import ModelLoadError
from rankserve.models import recipes
from rankserve.models.attention import packed_attention
from rankserve.models.batch import Packed
from rankserve.models.model_dir import read_json, require_one_label, st_embedder, tokenizer_max
from rankserve.models.pooling import PooledEncoder, normalize_pooling, pool
from rankserve.models.rows import by_rows

ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # rope_scaling: {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"} or {"rope_type": "linear", "factor"}; None = plain RoPE.
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False  # the LM head is the embedding matrix (recipes read it from there)
    causal: bool = False
    qkv_bias: bool = False  # Qwen2: biases on q/k/v projections (not on o)
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k, before RoPE
    activation: str = "silu"  # the gated MLP's: silu (SwiGLU) | gelu_tanh (Gemma's GeGLU)
    embed_scale: float = 1.0  # Gemma: embeddings times sqrt(hidden), rounded to the weights' dtype
    norm_offset: float = 0.0  # Gemma: RMSNorm scales by (1 + weight), computed in float32

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, causal: bool = False) -> LlamaConfig:
        """Read a Hugging Face config dict (transformers 4.x ``rope_scaling``/``rope_theta`` or 5.x
        ``rope_parameters``). Mistral's ``sliding_window`` is not applied: our inputs are capped at
        ``max_length`` (512 for the Mistral reranker), far below any window it sets; Qwen3's
        ``use_sliding_window`` is refused (no published reranker or embedder sets it)."""
        model_type = str(cfg.get("model_type", "llama"))
        gemma = model_type == "gemma"
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
        if act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
        if cfg.get("use_sliding_window"):
            raise ValueError("use_sliding_window is not supported (full attention only)")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=theta,
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 131072)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", gemma)),
            causal=causal,
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            activation=ACTIVATIONS[act],
            embed_scale=cfg["hidden_size"] ** 0.5 if gemma else 1.0,
            norm_offset=1.0 if gemma else 0.0,
        )


def default_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """Plain RoPE's [dim/2] float32 inverse frequencies, computed on the CPU even under a meta/cuda
    default device (moved per batch by ``rope_cos_sin``)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))


def rope_inv_freq(c: LlamaConfig) -> torch.Tensor:
    """[head_dim/2] float32 inverse frequencies, after llama3 / linear scaling (as transformers)."""
    inv_freq = default_inv_freq(c.head_dim, c.rope_theta)
    s = c.rope_scaling
    if s is None:
        return inv_freq
    factor = float(s["factor"])
    if s["rope_type"] == "linear":
        return inv_freq / factor
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    old_len = s.get("original_max_position_embeddings", 8192)
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [N] -> cos, sin [N, 1, head_dim] in float32 (broadcast over heads)."""
    freqs = position_ids.float()[:, None] * inv_freq.to(position_ids.device)[None, :]  # [N, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, hd] (any dtype) rotated in float32 (rotate-half layout, as the HF checkpoints)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class RMSNorm(nn.Module):
    """Llama's: the normalized input cast back, then times the weight. With ``offset`` (Gemma) the
    weight plus offset multiplies in float32 before the cast, as each family's reference does."""

    def __init__(self, size: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (xf * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        qkv_bias = c.attention_bias or c.qkv_bias
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.attention_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.causal, self.qk_norm = c.causal, c.qk_norm

    def forward(self, x: torch.Tensor, p: Packed, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]  # x [N, H]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = packed_attention(
            q.reshape(n, -1), k.reshape(n, -1), self.v_proj(x), p, self.num_heads, self.num_kv_heads, causal=self.causal
        )  # [N, nh*hd]
        return self.o_proj(out)


class MLP(nn.Module):
    """Gated: down(act(gate(x)) * up(x)); SwiGLU (silu), or GeGLU (tanh GELU) for Gemma."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.activation = c.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, H]
        # In place: at 8192 tokens each [N, intermediate] fp32 tensor is 256 MiB (inference only).
        if self.activation == "silu":
            h = F.silu(self.gate_proj(x), inplace=True)
        else:
            h = F.gelu(self.gate_proj(x), approximate="tanh")
        return self.down_proj(h.mul_(self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, p: Packed, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), p, cos, sin)  # pre-norm residual blocks
        return by_rows(lambda h: h + self.mlp(self.post_attention_layernorm(h)), x)


class LlamaModel(nn.Module):
    """The decoder stack: packed ids -> packed last hidden states [N, H] (after the final norm)."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
        # A plain attribute, not a buffer: it stays float32 when the module is cast to bf16.
        self.inv_freq = rope_inv_freq(c)

    def forward(self, p: Packed, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``embeds`` [N, H] replaces the token embeddings (a VL model's, with image vectors in)."""
        cos, sin = rope_cos_sin(p.position_ids, self.inv_freq)  # once per batch, shared by layers
        x = self.embed_tokens(p.input_ids) if embeds is None else embeds  # [N, H]
        if self.config.embed_scale != 1.0:  # Gemma; the factor rounded to the weights' dtype, as its reference
            x = x * torch.tensor(self.config.embed_scale, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, p, cos, sin)
        return self.norm(x)


class LlamaForSequenceClassification(nn.Module):
    """Reranker: pooled last hidden state -> ``score`` (no bias). Keys ``model.*``, ``score.weight``.

    Returns raw logits [B, num_labels]; the runner divides by the config ``temperature``."""

    def __init__(self, c: LlamaConfig, pooling: str, num_labels: int = 1):
        super().__init__()
        self.model = LlamaModel(c)
        self.score = nn.Linear(c.hidden_size, num_labels, bias=False)
        self.pooling = pooling

    def forward(self, p: Packed) -> torch.Tensor:
        return self.score(pool(self.model(p), p, self.pooling))


# -- config.json -> ModelSpec fields (registered in loader.ARCHITECTURES) -----------------------

NVIDIA_RERANK_TEMPLATE = "question:{query} \n \n passage:{passage}"  # real newlines
NVIDIA_QUERY_PREFIX, NVIDIA_PASSAGE_PREFIX = "query: ", "passage: "
NVIDIA_EMBED_DIMENSIONS = (384, 512, 768, 1024, 2048)  # llama-3.2-nv-embedqa-1b-v2 (hidden 2048)
# Qwen3-Embedding's query prompt (its model card); documents go in plain.
QWEN3_EMBED_QUERY_PREFIX = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)
# Longest inputs the published models were trained and documented for; config files may say less,
# never more (Llama 3.2 tokenizers advertise 131072). ``--max-length`` overrides.
DEFAULT_MAX_LENGTH = {"llama": 8192, "mistral": 512, "qwen2": 8192, "qwen3": 8192, "gemma": 8192}
TRANSFORMERS_GENERATION_MAX_LENGTH = 20  # old PretrainedConfig default: a generation length, not a limit
FAMILIES = {"Llama": "llama", "Mistral": "mistral", "Qwen2": "qwen2", "Qwen3": "qwen3", "Gemma": "gemma"}
NVIDIA_FAMILIES = ("llama", "mistral")  # whose plain base models are NVIDIA's bidirectional encoders


def _family(cfg: dict[str, Any], arch: str) -> str:
    for prefix, family in FAMILIES.items():
        if arch.startswith(prefix):
            return family
    model_type = str(cfg.get("model_type", ""))
    return next((f for f in FAMILIES.values() if model_type.startswith(f)), "llama")


def _is_bidirectional(cfg: dict[str, Any], arch: str, family: str) -> bool:
    """``is_causal`` decides when present. Else NVIDIA layouts (a ``*Bidirectional*`` architecture,
    a ``*_bidirec`` model_type, or a ``pooling`` key, which only NVIDIA's configs carry) and plain
    Llama / Mistral base models are bidirectional; heads (``*ForSequenceClassification``,
    ``*ForCausalLM``) and the other families (Qwen3-Embedding is causal) are causal."""
    if "is_causal" in cfg:
        return not cfg["is_causal"]
    if "Bidirectional" in arch or str(cfg.get("model_type", "")).endswith("_bidirec") or "pooling" in cfg:
        return True
    return family in NVIDIA_FAMILIES and arch.endswith("Model")


def _pad_id(cfg: dict[str, Any]) -> int:
    """Llama tokenizers have no pad token; padding is masked, so any in-vocabulary id works."""
    for key in ("pad_token_id", "eos_token_id"):
        value = cfg.get(key)
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int) and 0 <= value < cfg["vocab_size"]:
            return value
    return 0


def _prompts(directory: Path) -> dict[str, str]:
    """sentence-transformers ``config_sentence_transformers.json`` prompts, if any."""
    prompts = (read_json(directory / "config_sentence_transformers.json") or {}).get("prompts") or {}
    return {k: v for k, v in prompts.items() if isinstance(v, str)}


def length_limits(c: LlamaConfig, family: str, directory: Path, config_max: Any) -> list[int | None]:
    """The bounds on a Llama-family model's input length (the smallest given one wins): positions,
    the family's documented length, the tokenizer's, and a config ``max_length`` unless it is the
    old generation default."""
    usable = isinstance(config_max, int) and config_max != TRANSFORMERS_GENERATION_MAX_LENGTH
    return [
        c.max_position_embeddings,
        DEFAULT_MAX_LENGTH[family],
        tokenizer_max(directory),
        config_max if usable else None,
    ]


def config_temperature(cfg: dict[str, Any]) -> float:
    """The config's ``temperature`` (a reranker's logit is divided by it); must be > 0."""
    temperature = float(cfg.get("temperature", 1.0))
    if not temperature > 0:
        raise ModelLoadError(f"temperature must be > 0, got {temperature}")
    return temperature


def _rerank_template(
    cfg: dict[str, Any], family: str, arch: str, recipe: recipes.Recipe | None, choice: recipes.RecipeChoice
) -> str:
    """The reranker's prompt: its recipe's, else the config's, else NVIDIA's (Llama / Mistral)."""
    if recipe is not None:
        return recipe.template(choice.instruction, choice.template)
    if choice.instruction is not None:
        raise ModelLoadError("--instruction goes into a recipe's prompt: give --recipe as well")
    template = choice.template or cfg.get("rerank_template")
    if template is None and family not in NVIDIA_FAMILIES:
        raise ModelLoadError(
            f"{arch}: give its prompt with --recipe ({', '.join(recipes.RECIPES)}) or --rerank-template"
        )
    return template or NVIDIA_RERANK_TEMPLATE


def build(
    directory: Path, cfg: dict[str, Any], arch: str, choice: recipes.RecipeChoice = recipes.RecipeChoice()
) -> dict[str, Any]:
    """ModelSpec fields for a Llama-family directory; config files first, documented defaults after.
    A ``*ForCausalLM`` is served through a yes/no recipe (``models/recipes.py``)."""
    family = _family(cfg, arch)
    recipe = recipes.choose(choice.name, directory, cfg, arch)
    causal_lm = arch.endswith("ForCausalLM")
    kind = "cross-encoder" if causal_lm or arch.endswith("ForSequenceClassification") else "embedder"
    bidirectional = False if causal_lm else _is_bidirectional(cfg, arch, family)
    c = LlamaConfig.from_hf(cfg, causal=not bidirectional)
    limits = length_limits(c, family, directory, cfg.get("max_length"))
    st = st_embedder(directory) if kind == "embedder" else None
    if st is not None:
        limits.append(st[2])
    fields: dict[str, Any] = dict(
        kind=kind,
        family=family,
        max_length=min(x for x in limits if x),
        pad_id=_pad_id(cfg),
        hidden_size=c.hidden_size,
        extra={"causal": c.causal, "recipe": recipe.name if recipe else None},
    )
    default_pooling = "mean" if bidirectional else "last"
    if kind == "cross-encoder":
        template = _rerank_template(cfg, family, arch, recipe, choice)
        if causal_lm:  # the LM head's two rows become the one-logit head, at the last token
            positive, negative = recipes.score_token_ids(recipe, directory / "tokenizer.json", choice.score_tokens)
            return dict(
                fields,
                module=LlamaForSequenceClassification(c, "last"),
                pooling="last",
                temperature=1.0,
                rerank_template=template,
                prepare_state=lambda state: recipes.score_head(state, positive, negative),
            )
        require_one_label(cfg, arch)
        pooling = normalize_pooling(str(cfg.get("pooling", default_pooling)))
        return dict(
            fields,
            module=LlamaForSequenceClassification(c, pooling),
            pooling=pooling,
            temperature=config_temperature(cfg),
            rerank_template=template,
        )
    pooling = normalize_pooling(str(cfg.get("pooling", st[0] if st else default_pooling)))
    prompts = _prompts(directory)
    nvidia = family in NVIDIA_FAMILIES
    dims = cfg.get("matryoshka_dimensions")
    if dims is None and cfg.get("model_type") == "llama_bidirec" and c.hidden_size == NVIDIA_EMBED_DIMENSIONS[-1]:
        dims = NVIDIA_EMBED_DIMENSIONS
    return dict(
        fields,
        module=PooledEncoder(LlamaModel(c), pooling),
        pooling=pooling,
        normalize=st[1] if st else True,
        query_prefix=prompts.get(
            "query", NVIDIA_QUERY_PREFIX if nvidia else QWEN3_EMBED_QUERY_PREFIX if family == "qwen3" else ""
        ),
        passage_prefix=prompts.get("passage", prompts.get("document", NVIDIA_PASSAGE_PREFIX if nvidia else "")),
        dimensions=tuple(sorted(int(d) for d in dims)) if dims else None,
    )


ARCHITECTURE_NAMES = tuple(
    f"{base}{suffix}"
    for base in ("Llama", "Mistral")
    for suffix in ("BidirectionalForSequenceClassification", "BidirectionalModel")
) + tuple(f"{base}{suffix}" for base in FAMILIES for suffix in ("ForSequenceClassification", "Model", "ForCausalLM"))
