"""DeBERTa-v2/v3 cross-encoders and embedders against transformers on tiny random checkpoints.

Two shapes: v3-like (shared attention keys, log-bucketed relative positions with 8 buckets so
20-45-token pairs reach the log range, LayerNorm'd relative embeddings, no absolute positions,
no token types) and v2-like (separate position projections, no buckets, absolute positions and
token types added to the input). Every weight perturbed. Reference: transformers'
DebertaV2ForSequenceClassification / DebertaV2Model on a padded batch. Tolerance: float32, 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from checkpoints import WORDS, make_deberta
from conftest import with_engine
from tokenizers import Tokenizer

from rankserve.errors import ModelLoadError
from rankserve.models.deberta import bucket
from rankserve.models.loader import load_model

QUERY = "how do i list the files in a directory"
PASSAGES = [" ".join(WORDS[i : i + n]) for i, n in ((0, 30), (20, 8), (40, 36), (5, 3), (60, 25))]
TOL = 1e-4


def tokenizer(directory) -> Tokenizer:
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()  # MiniLM's tokenizer.json pads to 128; the engine never pads inside a text
    tok.no_truncation()
    return tok


def padded(encodings) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in encodings)

    def pad(rows, value):
        return torch.tensor([r + [value] * (width - len(r)) for r in rows])

    return {
        "input_ids": pad([e.ids for e in encodings], 0),
        "token_type_ids": pad([e.type_ids for e in encodings], 0),
        "attention_mask": pad([[1] * len(e.ids) for e in encodings], 0),
    }


@pytest.mark.parametrize("shape", ["v3", "v2"])
def test_cross_encoder_equals_transformers(tmp_path, shape):
    directory, model = make_deberta(tmp_path / "ce", "ce", shape)
    tok = tokenizer(directory)
    batch = padded([tok.encode(QUERY, p) for p in PASSAGES])
    assert batch["input_ids"].shape[1] > 8  # pairs reach past the exact buckets
    with torch.no_grad():
        expected = model(**batch).logits[:, 0]
    got = with_engine(directory, lambda e: e.rank(QUERY, PASSAGES, "END"))
    assert max(abs(a - b) for a, b in zip(got.scores, expected.tolist())) <= TOL
    spec = load_model(directory)
    assert (spec.family, spec.kind, spec.pooling) == ("deberta", "cross-encoder", "cls")


def test_embedder_equals_transformers_mean_pooled(tmp_path):
    directory, model = make_deberta(tmp_path / "bi", "bi", "v3")
    tok = tokenizer(directory)
    batch = padded([tok.encode(t) for t in PASSAGES])
    mask = batch["attention_mask"]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    expected = torch.nn.functional.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    got = with_engine(directory, lambda e: e.embed(PASSAGES, None, "END", None)).vectors
    assert (torch.as_tensor(got) - expected).abs().max() <= TOL


def test_buckets_are_exact_near_and_logarithmic_far():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    rel = torch.arange(-600, 601)[:, None] - torch.zeros(1, dtype=torch.long)
    assert torch.equal(bucket(rel, 256, 512), make_log_bucket_position(rel, 256, 512).long())
    assert torch.equal(bucket(rel, 8, 64), make_log_bucket_position(rel, 8, 64).long())
    assert torch.equal(bucket(rel, -1, 64), rel)


def test_unsupported_deberta_configs_fail_clearly(tmp_path):
    import json

    directory, _ = make_deberta(tmp_path / "ce", "ce", "v3")
    cfg = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**cfg, "conv_kernel_size": 3}))
    with pytest.raises(ModelLoadError, match="conv_kernel_size"):
        load_model(directory)
