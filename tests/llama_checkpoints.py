"""Tiny random Llama / Mistral checkpoints in NVIDIA's retriever layouts (written into temp dirs).

The weights come from transformers (random init, ``initializer_range`` 0.3 so scores differ);
the directory then gets NVIDIA's config.json shape: ``architectures``
``LlamaBidirectionalForSequenceClassification`` / ``LlamaBidirectionalModel``, ``model_type``
``llama_bidirec``, an ``auto_map`` naming custom code that does not exist (it must never be needed),
``pooling`` and ``temperature``, and transformers 4.x ``rope_scaling`` + ``rope_theta`` keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
# Llama 3's pre-tokenizer split (tiktoken's cl100k pattern).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SENTENCES = [
    "question: how do i list files in a directory",
    "passage: the ls command lists directory contents, sorted by name",
    "query: what is the capital city of france?",
    "passage: paris is the capital and largest city of france",
    "banana is a fruit rich in potassium; a small yellow fruit",
    "show disk space usage with df and du, then sort the lines",
    "the cat and the dog are small animals. Café, naïve, 東京 and emoji 🙂 too",
]
# Llama-3.2-style RoPE, shrunk so llama3 scaling changes short positions: with head_dim 16 and
# theta 10000 the wavelengths run 6..20000 tokens, so against an original context of 64 some are
# kept, some smoothed and some divided by `factor`.
ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
AUTO_MAP = {
    "AutoConfig": "llama_bidirectional_model.LlamaBidirectionalConfig",
    "AutoModel": "llama_bidirectional_model.LlamaBidirectionalModel",
    "AutoModelForSequenceClassification": "llama_bidirectional_model.LlamaBidirectionalForSequenceClassification",
}


def llama_tokenizer(directory: Path, model_max_length: int | None = 256) -> int:
    """A small byte-level BPE like Llama 3's: BOS added, no pad token. Returns the vocab size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[BOS, EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos)]),
        ]
    )
    tok.save(str(directory / "tokenizer.json"))
    tok_cfg = {"bos_token": BOS, "eos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast"}
    if model_max_length is not None:
        tok_cfg["model_max_length"] = model_max_length
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return tok.get_vocab_size()


def tiny_config(family: str = "llama", **kw) -> dict:
    """Hidden 64, 2 layers, 4 query / 2 KV heads (GQA), SwiGLU 128, llama3 RoPE scaling for Llama."""
    cfg = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        initializer_range=0.3,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    )
    if family == "llama":
        cfg["rope_scaling"] = dict(ROPE_SCALING)
    cfg.update(kw)
    return cfg


def hf_config(cfg: dict):
    """The transformers config a directory's config.json describes (NVIDIA extras dropped)."""
    from transformers import LlamaConfig, MistralConfig

    extras = (
        "architectures",
        "model_type",
        "auto_map",
        "pooling",
        "temperature",
        "id2label",
        "label2id",
        "transformers_version",
        "torch_dtype",
        "dtype",
    )
    kwargs = {k: v for k, v in cfg.items() if k not in extras}
    return (MistralConfig if str(cfg.get("model_type", "")).startswith("mistral") else LlamaConfig)(**kwargs)


def reference_model(directory: Path):
    """transformers LlamaModel / MistralModel holding the directory's weights (float32), plus the
    ``score`` head weight when there is one."""
    from transformers import LlamaModel, MistralModel

    cfg = json.loads((directory / "config.json").read_text())
    config = hf_config(cfg)
    model = (MistralModel if config.model_type == "mistral" else LlamaModel)(config).eval()
    state = {}
    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    for name in files:
        state.update(load_file(str(directory / name)))
    score = state.pop("score.weight", None)
    state = {k.removeprefix("model."): v.float() for k, v in state.items() if not k.startswith("lm_head.")}
    model.load_state_dict(state, strict=True)
    return model, (None if score is None else score.float())


def _random_base(family: str, cfg: dict, seed: int):
    from transformers import LlamaModel, MistralModel

    torch.manual_seed(seed)
    config = hf_config({**cfg, "model_type": family})
    return (MistralModel if family == "mistral" else LlamaModel)(config).eval()


def _write_config(directory: Path, cfg: dict) -> None:
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))


def make_nvidia_reranker(
    directory: Path,
    *,
    family: str = "llama",
    seed: int = 0,
    pooling: str = "avg",
    temperature: float | None = 2.0,
    dtype: torch.dtype = torch.float32,
    model_max_length: int | None = 256,
    **overrides,
) -> Path:
    """LlamaBidirectionalForSequenceClassification (or Mistral): keys ``model.*`` + ``score.weight``."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = llama_tokenizer(directory, model_max_length)
    cfg = tiny_config(family, **overrides)
    assert vocab <= cfg["vocab_size"]
    base = _random_base(family, cfg, seed)
    state = {f"model.{k}": v.to(dtype).contiguous() for k, v in base.state_dict().items()}
    state["score.weight"] = (torch.randn(1, cfg["hidden_size"]) * 0.3).to(dtype)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    prefix = "Mistral" if family == "mistral" else "Llama"
    nv = dict(
        cfg,
        architectures=[f"{prefix}BidirectionalForSequenceClassification"],
        model_type=f"{family}_bidirec",
        auto_map=AUTO_MAP,
        pooling=pooling,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    if temperature is not None:
        nv["temperature"] = temperature
    _write_config(directory, nv)
    return directory


def make_nvidia_embedder(
    directory: Path,
    *,
    family: str = "llama",
    seed: int = 1,
    lm_head: str | None = None,
    shard_bytes: int | None = None,
    dtype: torch.dtype = torch.float32,
    model_max_length: int | None = 256,
    **overrides,
) -> Path:
    """LlamaBidirectionalModel (mean pooling) written by transformers' save_pretrained: the base
    model (keys without ``model.``), or with ``lm_head`` "tied" / "untied" a causal LM (keys
    ``model.*``; tied drops ``lm_head.weight``, untied keeps one the encoder must ignore);
    optionally sharded or in bf16/fp16."""
    from transformers import LlamaForCausalLM, MistralForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    vocab = llama_tokenizer(directory, model_max_length)
    cfg = tiny_config(family, tie_word_embeddings=lm_head == "tied", **overrides)
    assert vocab <= cfg["vocab_size"]
    if lm_head is None:
        model = _random_base(family, cfg, seed)
    else:
        torch.manual_seed(seed)
        lm = MistralForCausalLM if family == "mistral" else LlamaForCausalLM
        model = lm(hf_config({**cfg, "model_type": family})).eval()
    kwargs = {"max_shard_size": shard_bytes} if shard_bytes else {}
    model.to(dtype).save_pretrained(directory, safe_serialization=True, **kwargs)
    prefix = "Mistral" if family == "mistral" else "Llama"
    nv = dict(
        cfg,
        architectures=[f"{prefix}BidirectionalModel"],
        model_type=f"{family}_bidirec",
        auto_map=AUTO_MAP,
        pooling="avg",
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    _write_config(directory, nv)
    return directory


def make_hf_llama_classifier(directory: Path, seed: int = 2) -> Path:
    """A plain transformers LlamaForSequenceClassification (causal, last-token pooling, v5 config)."""
    from transformers import LlamaForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    vocab = llama_tokenizer(directory)
    cfg = tiny_config("llama")
    assert vocab <= cfg["vocab_size"]
    torch.manual_seed(seed)
    config = hf_config({**cfg, "model_type": "llama"})
    config.num_labels, config.pad_token_id = 1, cfg["eos_token_id"]
    LlamaForSequenceClassification(config).eval().save_pretrained(directory, safe_serialization=True)
    return directory
