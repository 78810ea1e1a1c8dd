"""Tiny random Qwen2 / Qwen3 / Gemma / Llama checkpoints written by transformers into temp dirs.

Every parameter (norm weights and biases included) gets random noise, so that Gemma's (1 + weight)
norms, Qwen3's q/k norms and Qwen2's q/k/v biases all change the output. The tokenizer is a small
byte-level BPE trained on the recipes' own prompt text, with the chat special tokens, and with the
answer words ("yes", "no", "Yes", "0", "1") as single tokens; ``bos`` adds a BOS like Gemma's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from llama_checkpoints import LLAMA3_SPLIT, SENTENCES
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from rankserve.models.recipes import BGE_GEMMA_PROMPT, MXBAI_PREFIX, MXBAI_TASK, QWEN3_INSTRUCTION, QWEN3_PREFIX

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<bos>"]
ANSWERS = ["yes", "no", "Yes", "No", "0", "1"]
CORPUS = (
    SENTENCES
    + [
        QWEN3_PREFIX,
        QWEN3_INSTRUCTION,
        BGE_GEMMA_PROMPT,
        MXBAI_PREFIX,
        MXBAI_TASK,
        "<Instruct>: <Query>: <Document>: A: B: query: document: instruction:",
    ]
    + [" ".join(ANSWERS)] * 50
)


def decoder_tokenizer(directory: Path, *, bos: bool = False, model_max_length: int = 512) -> int:
    """Write tokenizer.json (+ tokenizer_config.json); returns the vocabulary size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos:
        steps.append(
            processors.TemplateProcessing(
                single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
            )
        )
    tok.post_processor = processors.Sequence(steps)
    for word in ANSWERS:
        assert len(tok.encode(word, add_special_tokens=False).ids) == 1, word
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length})
    )
    return tok.get_vocab_size()


def hf_decoder_config(family: str, **kw):
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config, Qwen3Config

    base = dict(
        vocab_size=768,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if family in ("qwen3", "gemma", "llama"):
        base["head_dim"] = 16
    if family == "gemma":
        base["hidden_act"] = "gelu_pytorch_tanh"
    base.update(kw)
    return {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "gemma": GemmaConfig, "llama": LlamaConfig}[family](**base)


def hf_class(family: str, head: str):
    import transformers

    prefix = {"qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma", "llama": "Llama"}[family]
    return getattr(transformers, prefix + head)


def make_decoder(
    directory: Path, family: str, head: str = "ForCausalLM", *, seed: int = 0, tied: bool = True, **kw
) -> Path:
    """A random ``{Family}{head}`` (ForCausalLM, ForSequenceClassification, Model) saved by transformers."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = decoder_tokenizer(directory, bos=family == "gemma")
    config = hf_decoder_config(family, tie_word_embeddings=tied, **kw)
    assert vocab <= config.vocab_size
    if head == "ForSequenceClassification":
        config.num_labels = 1
    torch.manual_seed(seed)
    model = hf_class(family, head)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def reference(directory: Path, family: str, head: str = "ForCausalLM"):
    """transformers' own class holding the directory's weights, float32, eval mode."""
    return hf_class(family, head).from_pretrained(directory, dtype=torch.float32).eval()
