"""Tiny random checkpoints written by tests into temp dirs (never committed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from rankserve.models.model_dir import default_model_dir

WORDS = (
    "the a an of to in is are was for on with as by at from that this it be or and not which what how why "
    "who where when do does list file files directory directories command commands print show copy move "
    "remove delete create make process processes memory network socket time date user users group password "
    "system kernel module disk space usage find search text pattern line lines count sort unique compress "
    "archive extract cat dog paris france capital city river banana fruit potassium rich small animal query "
    "passage question answer score rank model test hello world contents long short random words"
).split()


def bert_tokenizer(directory: Path) -> None:
    """The real MiniLM WordPiece tokenizer (pair template with token types)."""
    shutil.copy(default_model_dir() / "tokenizer.json", directory / "tokenizer.json")


def roberta_tokenizer(directory: Path) -> int:
    """A small word-level tokenizer with XLM-R's <s> q </s></s> p </s> template. Returns vocab size."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>"])
    tok.save(str(directory / "tokenizer.json"))
    return len(vocab)


def bert_config(**kw) -> dict:
    cfg = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=2,
        hidden_act="gelu",
        initializer_range=0.3,
    )  # large enough that random scores differ between inputs
    cfg.update(kw)
    return cfg


def make_bert_cross_encoder(directory: Path, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**bert_config(), num_labels=1)).eval()
    model.save_pretrained(directory, safe_serialization=True)
    bert_tokenizer(directory)
    return directory


def make_xlmr_cross_encoder(directory: Path, seed: int = 0) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    vocab = roberta_tokenizer(directory)
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        **bert_config(vocab_size=vocab, max_position_embeddings=130, type_vocab_size=1),
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
    )
    XLMRobertaForSequenceClassification(cfg).eval().save_pretrained(directory, safe_serialization=True)
    return directory


def make_bert_bi_encoder(directory: Path, seed: int = 0, pooling: str = "mean") -> Path:
    """A sentence-transformers layout (modules.json, 1_Pooling, Normalize) around a random BertModel."""
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertModel(BertConfig(**bert_config())).eval().save_pretrained(directory, safe_serialization=True)
    bert_tokenizer(directory)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(default_model_dir() / name, directory / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return directory


# v3-like and v2-like DeBERTa configurations (see tests/models/test_deberta_parity.py)
DEBERTA_SHAPES = {
    "v3": dict(
        relative_attention=True,
        position_buckets=8,
        max_relative_positions=64,
        pos_att_type=["p2c", "c2p"],
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
    ),
    "v2": dict(
        relative_attention=True,
        position_buckets=-1,
        max_relative_positions=32,
        pos_att_type="c2p|p2c",
        share_att_key=False,
        norm_rel_ebd="none",
        position_biased_input=True,
        type_vocab_size=2,
    ),
}


def make_deberta(directory, head: str, shape: str, seed: int = 0):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model

    directory.mkdir(parents=True, exist_ok=True)
    bert_tokenizer(directory)
    config = DebertaV2Config(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=512,
        pad_token_id=0,
        num_labels=1,
        layer_norm_eps=1e-7,
        **DEBERTA_SHAPES[shape],
    )
    torch.manual_seed(seed)
    model = (DebertaV2ForSequenceClassification if head == "ce" else DebertaV2Model)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model


def make_modernbert(directory, head: str, pooling: str = "cls", seed: int = 0):
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, ModernBertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = roberta_tokenizer(directory)
    config = ModernBertConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        local_attention=8,
        global_attn_every_n_layers=2,
        max_position_embeddings=512,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        cls_token_id=0,
        sep_token_id=2,
        classifier_pooling=pooling,
        num_labels=1,
        norm_bias=True,
        attention_bias=True,
        classifier_bias=True,
    )
    torch.manual_seed(seed)
    model = (ModernBertForSequenceClassification if head == "ce" else ModernBertModel)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model
