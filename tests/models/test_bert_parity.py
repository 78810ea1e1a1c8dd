"""BERT / XLM-R cross-encoders and the pooled bi-encoder vs transformers / sentence-transformers.

Tolerance: fp32, max abs diff <= 1e-5 on tiny random checkpoints written by the fixtures.
"""

from __future__ import annotations

import pytest
import torch

from rankserve.engine.backends.cpu_gemm import onednn_available, use_cpu_gemm
from rankserve.engine.tokenize import TokenizerPolicy
from rankserve.models.batch import Batch
from rankserve.models.loader import load_model

TOL = 1e-5
QUERY = "how do i list files in a directory"
PASSAGES = [
    "the ls command lists directory contents",
    "banana is a fruit rich in potassium",
    "paris is the capital city of france and a long passage with many words to make padding happen here",
    "show disk space usage",
]


def encode(spec, query, passages):
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=True
    )
    return policy.pairs(query, passages, "END")


def ours(spec, encoded) -> torch.Tensor:
    batch = Batch.from_sequences([e.ids for e in encoded], [e.type_ids for e in encoded], pad_id=spec.pad_id)
    with torch.inference_mode():
        return spec.module(batch.packed())


@pytest.mark.parametrize("gemm", ["torch", "onednn"])
@pytest.mark.parametrize("rows", [None, 5], ids=["whole-mlp", "mlp-in-5-row-slices"])
@pytest.mark.parametrize("fixture", ["bert_ce_dir", "xlmr_ce_dir"])
def test_cross_encoder_matches_transformers(fixture, rows, gemm, request, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    if gemm == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN linear kernel")
    if rows:  # the CPU path slices the MLP by rows (models/rows.py); slices must not change a score
        monkeypatch.setattr("rankserve.models.rows.CPU_ROWS", rows)
    directory = request.getfixturevalue(fixture)
    spec = load_model(directory)
    assert use_cpu_gemm(spec.module, gemm) == gemm  # the library the CPU runner may pick (cpu_gemm.py)
    assert spec.kind == "cross-encoder"
    encoded = encode(spec, QUERY, PASSAGES)
    batch = Batch.from_sequences([e.ids for e in encoded], [e.type_ids for e in encoded], pad_id=spec.pad_id)
    ref = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.inference_mode():
        expected = ref(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids
        ).logits
    got = ours(spec, encoded)
    assert got.shape == expected.shape == (len(PASSAGES), 1)
    assert (got - expected).abs().max().item() <= TOL
    assert expected.std() > 1e-3  # the check can fail: scores differ between passages


def test_xlmr_tokenizer_pair_template(xlmr_ce_dir):
    spec = load_model(xlmr_ce_dir)
    (enc,) = encode(spec, "list files", ["show disk"])
    assert enc.ids[0] == 0 and enc.ids.count(2) == 3  # <s> q </s></s> p </s>


def test_bi_encoder_matches_sentence_transformers(bert_bi_dir):
    from sentence_transformers import SentenceTransformer

    spec = load_model(bert_bi_dir)
    assert (spec.kind, spec.pooling, spec.normalize, spec.max_length) == ("embedder", "mean", True, 64)
    texts = [QUERY, *PASSAGES]
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=True
    )
    encoded = policy.texts(texts, "END")
    got = torch.nn.functional.normalize(ours(spec, encoded), dim=-1)
    expected = torch.tensor(SentenceTransformer(str(bert_bi_dir), device="cpu").encode(texts))
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("fixture", ["bert_ce_dir", "xlmr_ce_dir", "bert_bi_dir"])
def test_batch_invariance(fixture, request):
    """A pair scored alone equals the same pair scored inside a padded batch."""
    spec = load_model(request.getfixturevalue(fixture))
    encoded = encode(spec, QUERY, PASSAGES)
    together = ours(spec, encoded)
    for i, enc in enumerate(encoded):
        alone = ours(spec, [enc])
        assert (alone[0] - together[i]).abs().max().item() <= TOL


def test_left_padding_equals_right_padding(bert_ce_dir):
    spec = load_model(bert_ce_dir)
    encoded = encode(spec, QUERY, PASSAGES)
    ids, types = [e.ids for e in encoded], [e.type_ids for e in encoded]
    with torch.inference_mode():
        right = spec.module(Batch.from_sequences(ids, types).packed())
        left = spec.module(Batch.from_sequences(ids, types, left=True).packed())
    assert (right - left).abs().max().item() <= TOL


def test_default_model_matches_sentence_transformers():
    """The packaged all-MiniLM-L6-v2, real weights: our vectors == sentence-transformers'."""
    from sentence_transformers import SentenceTransformer

    from rankserve.models.model_dir import default_model_dir

    spec = load_model(default_model_dir())
    texts = ["A man is eating food.", "The ls command lists directory contents, sorted by name by default."]
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=True
    )
    got = torch.nn.functional.normalize(ours(spec, policy.texts(texts, "END")), dim=-1)
    expected = torch.tensor(SentenceTransformer(str(default_model_dir()), device="cpu").encode(texts))
    assert (got - expected).abs().max().item() <= TOL
