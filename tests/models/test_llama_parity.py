"""Llama / Mistral bidirectional rerankers and embedders vs transformers, on tiny random checkpoints.

Reference: transformers ``LlamaModel`` / ``MistralModel`` given an explicit 4-D all-visible float
mask (padding keys only, no causal triangle) and explicit per-sequence position ids, pooled over
real tokens and multiplied by the same ``score`` weights.
Tolerances: fp32 max abs diff <= 1e-4 (logits and unit vectors); bf16 (ours, bf16 weights and
activations, RoPE/RMSNorm in fp32) vs the fp32 reference: <= 0.1 on logits of magnitude ~1 and
<= 0.03 on unit-vector components, and also <= BF16_VS_HF x transformers' own bf16 error on the
same inputs (floored, in case transformers' run is luckily exact): over 12 seeded checkpoints
(Llama and Mistral, seeds 0-5) ours/transformers' bf16 max abs diff was 0.55-2.0 for reranker
logits and 0.73-1.24 for embedding components; the fixtures measure 0.0223 vs 0.0145 (logits)
and 0.0083 vs 0.0071 (vectors).
"""

from __future__ import annotations

import pytest
import torch
from llama_checkpoints import (
    make_hf_llama_classifier,
    make_nvidia_embedder,
    make_nvidia_reranker,
    reference_model,
)

from rankserve.engine.backends.cpu_gemm import onednn_available, use_cpu_gemm
from rankserve.engine.backends.torch_runner import TorchRunner
from rankserve.engine.tokenize import TokenizerPolicy
from rankserve.errors import InputTooLong
from rankserve.models.batch import Batch
from rankserve.models.loader import load_model

TOL = 1e-4
BF16_LOGIT_TOL = 0.1
BF16_VECTOR_TOL = 0.03
BF16_VS_HF = 2.5  # ours may be at most this many times transformers' own bf16 error...
BF16_LOGIT_FLOOR, BF16_VECTOR_FLOOR = 0.02, 0.01  # ...or this, whichever is larger
QUERY = "how do i list files in a directory"
PASSAGES = [
    "the ls command lists directory contents, sorted by name",
    "banana is a fruit rich in potassium",
    "paris is the capital city of france and its largest city, a long passage with many words to pad",
    "show disk space usage",
    "Café, naïve, 東京 and emoji 🙂 too",
]


@pytest.fixture(scope="module")
def llama_rr(tmp_path_factory):
    return make_nvidia_reranker(tmp_path_factory.mktemp("llama-rr"))


@pytest.fixture(scope="module")
def mistral_rr(tmp_path_factory):
    return make_nvidia_reranker(tmp_path_factory.mktemp("mistral-rr"), family="mistral", temperature=None)


@pytest.fixture(scope="module")
def llama_emb(tmp_path_factory):
    return make_nvidia_embedder(tmp_path_factory.mktemp("llama-emb"))


def policy(spec) -> TokenizerPolicy:
    return TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=spec.rerank_template, with_type_ids=False
    )


def ours(spec, ids, left=False) -> torch.Tensor:
    batch = Batch.from_sequences(ids, pad_id=spec.pad_id, left=left)
    with torch.inference_mode():
        return spec.module(batch.packed()).float()


def reference_hidden(model, ids, left=False, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers last hidden states [B, T, H] under an all-visible padding mask, and the mask."""
    batch = Batch.from_sequences(ids, pad_id=0, left=left)
    real = batch.attention_mask.bool()
    mask = torch.zeros(real.shape[0], 1, real.shape[1], real.shape[1], dtype=dtype)
    mask.masked_fill_(~real[:, None, None, :], torch.finfo(dtype).min)
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model.to(dtype)(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions)
    return out.last_hidden_state.float(), real


def reference_pool(hidden, real, mode) -> torch.Tensor:
    if mode == "mean":
        return (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    rows = torch.arange(hidden.shape[0])
    first = real.long().argmax(1)
    last = real.shape[1] - 1 - real.flip(1).long().argmax(1)
    return hidden[rows, first if mode == "cls" else last]


def reference_logits(directory, ids, mode="mean", left=False, dtype=torch.float32) -> torch.Tensor:
    model, score = reference_model(directory)
    hidden, real = reference_hidden(model, ids, left, dtype)
    return reference_pool(hidden, real, mode) @ score.T


# -- rerankers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gemm", ["torch", "onednn"])
@pytest.mark.parametrize("rows", [None, 5], ids=["whole-mlp", "mlp-in-5-row-slices"])
@pytest.mark.parametrize("fixture", ["llama_rr", "mistral_rr"])
def test_reranker_matches_transformers(fixture, rows, gemm, request, monkeypatch):
    if gemm == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN linear kernel")
    if rows:  # the CPU path slices the MLP by rows (models/rows.py); slices must not change a score
        monkeypatch.setattr("rankserve.models.rows.CPU_ROWS", rows)
    directory = request.getfixturevalue(fixture)
    spec = load_model(directory)
    assert use_cpu_gemm(spec.module, gemm) == gemm  # the library the CPU runner may pick (cpu_gemm.py)
    assert (spec.kind, spec.pooling, spec.extra["causal"]) == ("cross-encoder", "mean", False)
    ids = [e.ids for e in policy(spec).pairs(QUERY, PASSAGES, "END")]
    got = ours(spec, ids)
    expected = reference_logits(directory, ids)
    assert got.shape == expected.shape == (len(PASSAGES), 1)
    assert (got - expected).abs().max().item() <= TOL
    assert expected.std() > 1e-2  # the check can fail: scores differ between passages


@pytest.mark.parametrize("pooling", ["cls", "last"])
def test_reranker_pooling_from_config(pooling, tmp_path):
    directory = make_nvidia_reranker(tmp_path, pooling=pooling)
    spec = load_model(directory)
    assert spec.pooling == pooling
    ids = [e.ids for e in policy(spec).pairs(QUERY, PASSAGES, "END")]
    for left in (False, True):
        got = ours(spec, ids, left=left)
        assert (got - reference_logits(directory, ids, pooling, left=left)).abs().max().item() <= TOL


def test_temperature_divides_the_logit(llama_rr, mistral_rr):
    spec = load_model(llama_rr)
    assert spec.temperature == 2.0 and load_model(mistral_rr).temperature == 1.0  # absent -> 1
    encoded = policy(spec).pairs(QUERY, PASSAGES, "END")
    served = torch.from_numpy(TorchRunner(spec, torch.device("cpu"), threads=1, dtype="float32").forward(encoded))
    raw = ours(spec, [e.ids for e in encoded])[:, 0]
    assert served.shape == (len(PASSAGES),)
    assert (served - raw / 2.0).abs().max().item() <= 1e-6


def test_reranker_bf16_within_bound(llama_rr):
    spec = load_model(llama_rr, dtype=torch.bfloat16)
    ids = [e.ids for e in policy(spec).pairs(QUERY, PASSAGES, "END")]
    got = ours(spec, ids)
    expected = reference_logits(llama_rr, ids)
    hf_bf16 = reference_logits(llama_rr, ids, dtype=torch.bfloat16)
    diff, hf_diff = (got - expected).abs().max().item(), (hf_bf16 - expected).abs().max().item()
    print(f"bf16 max abs diff vs fp32 reference: ours {diff:.4f}, transformers bf16 {hf_diff:.4f}")
    assert diff <= BF16_LOGIT_TOL
    assert diff <= max(BF16_VS_HF * hf_diff, BF16_LOGIT_FLOOR), (diff, hf_diff)
    assert 0 < hf_diff <= BF16_LOGIT_TOL  # the reference really ran in bf16, and sanely
    assert torch.equal(got.argsort(0), expected.argsort(0))  # same ranking


@pytest.mark.parametrize("fixture", ["llama_rr", "mistral_rr"])
def test_batch_invariance_left_and_right_padding(fixture, request):
    """A pair scored alone == the pair inside a padded batch, padded on either side."""
    spec = load_model(request.getfixturevalue(fixture))
    ids = [e.ids for e in policy(spec).pairs(QUERY, PASSAGES, "END")]
    right, left = ours(spec, ids), ours(spec, ids, left=True)
    assert (right - left).abs().max().item() <= TOL
    for i, seq in enumerate(ids):
        assert (ours(spec, [seq])[0] - right[i]).abs().max().item() <= TOL


def test_hf_llama_classifier_is_causal_last_token(tmp_path):
    """A plain transformers LlamaForSequenceClassification keeps its meaning: causal, last token."""
    from transformers import LlamaForSequenceClassification

    directory = make_hf_llama_classifier(tmp_path)
    spec = load_model(directory)
    assert (spec.kind, spec.pooling, spec.extra["causal"]) == ("cross-encoder", "last", True)
    ids = [e.ids for e in policy(spec).pairs(QUERY, PASSAGES, "END")]
    batch = Batch.from_sequences(ids, pad_id=spec.pad_id)
    ref = LlamaForSequenceClassification.from_pretrained(directory).eval()
    with torch.inference_mode():
        expected = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for left in (False, True):
        assert (ours(spec, ids, left=left) - expected).abs().max().item() <= TOL


# -- embedders ---------------------------------------------------------------------------------


def embed_check(directory, dtype=torch.float32, tol=TOL) -> tuple[float, float | None]:
    """Max abs diff of our unit vectors vs transformers' fp32 ones (asserted <= tol), and for a
    non-fp32 dtype transformers' own error in that dtype (None for fp32)."""
    spec = load_model(directory, dtype=dtype)
    texts = [spec.query_prefix + QUERY] + [spec.passage_prefix + p for p in PASSAGES]
    ids = [e.ids for e in policy(spec).texts(texts, "END")]
    got = torch.nn.functional.normalize(ours(spec, ids), dim=-1)

    def reference(ref_dtype) -> torch.Tensor:
        model, _ = reference_model(directory)
        hidden, real = reference_hidden(model, ids, dtype=ref_dtype)
        return torch.nn.functional.normalize(reference_pool(hidden, real, "mean"), dim=-1)

    expected = reference(torch.float32)
    diff = (got - expected).abs().max().item()
    assert diff <= tol, diff
    hf_diff = None if dtype == torch.float32 else (reference(dtype) - expected).abs().max().item()
    return diff, hf_diff


def test_embedder_matches_transformers(llama_emb):
    spec = load_model(llama_emb)
    assert (spec.kind, spec.pooling, spec.normalize) == ("embedder", "mean", True)
    assert (spec.query_prefix, spec.passage_prefix, spec.dimensions) == ("query: ", "passage: ", None)
    embed_check(llama_emb)


@pytest.mark.parametrize(
    "variant",
    [
        dict(lm_head="tied"),
        dict(lm_head="untied"),
        dict(shard_bytes=40_000),
        dict(dtype=torch.bfloat16),
        dict(dtype=torch.float16),
        dict(family="mistral", shard_bytes=60_000),
    ],
)
def test_checkpoint_layouts_load(variant, tmp_path):
    """Tied / untied LM head, sharded safetensors, bf16 and fp16 files: same numbers as transformers."""
    directory = make_nvidia_embedder(tmp_path, **variant)
    if "shard_bytes" in variant:
        assert (directory / "model.safetensors.index.json").is_file() and not (directory / "model.safetensors").exists()
    embed_check(directory)


def test_embedder_bf16_within_bound(llama_emb):
    diff, hf_diff = embed_check(llama_emb, dtype=torch.bfloat16, tol=BF16_VECTOR_TOL)
    print(f"bf16 embedder max abs diff vs fp32 reference: ours {diff:.4f}, transformers bf16 {hf_diff:.4f}")
    assert diff <= max(BF16_VS_HF * hf_diff, BF16_VECTOR_FLOOR), (diff, hf_diff)
    assert 0 < hf_diff <= BF16_VECTOR_TOL  # the reference really ran in bf16, and sanely


# -- prompts and truncation (byte-level BPE offsets) ---------------------------------------------


def test_template_reaches_tokenizer_with_real_newlines(llama_rr):
    spec = load_model(llama_rr)
    assert spec.rerank_template == "question:{query} \n \n passage:{passage}"
    (enc,) = policy(spec).pairs("list files", ["the ls command"], "END")
    tok = policy(spec).tokenizer
    assert enc.ids == tok.encode("question:list files \n \n passage:the ls command").ids
    assert (
        tok.decode(enc.ids, skip_special_tokens=False)
        == "<|begin_of_text|>question:list files \n \n passage:the ls command"
    )
    assert "\\n" not in tok.decode(enc.ids) and tok.token_to_id("Ċ") in enc.ids  # byte-level "\n"


def test_truncate_end_cuts_passage_first(llama_rr):
    spec = load_model(llama_rr, max_length=40)
    pol = policy(spec)
    passage = "the ls command lists directory contents, sorted by name. Café 東京 🙂 " * 6
    (enc,) = pol.pairs(QUERY, [passage], "END")
    assert len(enc) == 40
    text = pol.tokenizer.decode(enc.ids)
    head = f"question:{QUERY} \n \n passage:"
    assert text.startswith(head)  # template and the whole query survive
    kept = text[len(head) :]
    assert 0 < len(kept) < len(passage) and passage.startswith(kept.rstrip("\ufffd"))  # a passage prefix
    # A query too long as well: the passage goes entirely, then the query is cut from the right.
    (enc,) = pol.pairs(QUERY * 8, ["short passage"], "END")
    text = pol.tokenizer.decode(enc.ids)
    assert len(enc) == 40 and text.startswith("question:" + QUERY) and text.endswith(" \n \n passage:")
    with pytest.raises(InputTooLong, match="maximum allowed 40 tokens"):
        pol.pairs(QUERY, [passage], "NONE")


# -- loader: defaults, overrides, errors ---------------------------------------------------------


def test_max_length_defaults(tmp_path):
    from rankserve.models import llama

    rr = make_nvidia_reranker(tmp_path / "rr", model_max_length=None)
    assert load_model(rr).max_length == 8192  # no limit in the files: the documented default
    rr_long = make_nvidia_reranker(tmp_path / "rr-long", model_max_length=131072)
    assert load_model(rr_long).max_length == 8192  # Llama 3.2 tokenizers advertise 131072: never that
    mistral = make_nvidia_reranker(tmp_path / "mistral", family="mistral", model_max_length=None)
    assert load_model(mistral).max_length == 512
    assert load_model(rr, max_length=100).max_length == 100  # the flag wins
    cfg = {**__import__("json").loads((rr / "config.json").read_text()), "max_length": 20}
    assert llama.build(rr, cfg, "LlamaBidirectionalForSequenceClassification")["max_length"] == 8192


def test_prompt_overrides_win(llama_rr, llama_emb):
    spec = load_model(llama_rr, overrides={"rerank_template": "q: {query} p: {passage}"})
    assert spec.rerank_template == "q: {query} p: {passage}"
    spec = load_model(llama_emb, overrides={"query_prefix": "", "passage_prefix": "doc: "})
    assert (spec.query_prefix, spec.passage_prefix) == ("", "doc: ")


def test_prompts_from_sentence_transformers_config(tmp_path):
    import json

    directory = make_nvidia_embedder(tmp_path)
    (directory / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "Q> ", "passage": "P> "}})
    )
    spec = load_model(directory)
    assert (spec.query_prefix, spec.passage_prefix) == ("Q> ", "P> ")


def test_nvidia_embedder_dimensions_and_pad_id():
    """llama-3.2-nv-embedqa-1b-v2's config (hidden 2048) -> its Matryoshka sizes; built on meta."""
    from rankserve.models import llama

    cfg = dict(
        architectures=["LlamaBidirectionalModel"],
        model_type="llama_bidirec",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_theta=500000.0,
        pooling="avg",
        rope_scaling=dict(
            factor=32.0,
            high_freq_factor=4.0,
            low_freq_factor=1.0,
            original_max_position_embeddings=8192,
            rope_type="llama3",
        ),
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        max_position_embeddings=131072,
    )
    from pathlib import Path

    with torch.device("meta"):
        fields = llama.build(Path("/nonexistent"), cfg, "LlamaBidirectionalModel")
    assert fields["dimensions"] == (384, 512, 768, 1024, 2048)
    assert (fields["max_length"], fields["pad_id"], fields["hidden_size"]) == (8192, 128001, 2048)


def test_rope_matches_transformers():
    """llama3-scaled inverse frequencies equal transformers' for Llama 3.2 1B's real config."""
    from transformers import LlamaConfig as HFConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from rankserve.models.llama import LlamaConfig, rope_inv_freq

    raw = dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rope_scaling=dict(
            factor=32.0,
            high_freq_factor=4.0,
            low_freq_factor=1.0,
            original_max_position_embeddings=8192,
            rope_type="llama3",
        ),
    )
    expected, scaling = ROPE_INIT_FUNCTIONS["llama3"](HFConfig(**raw), "cpu")
    got = rope_inv_freq(LlamaConfig.from_hf(raw))
    assert scaling == 1.0 and torch.equal(got, expected)
    # transformers 5.x writes the same thing as rope_parameters; linear scaling divides by factor.
    v5 = {k: v for k, v in raw.items() if k not in ("rope_scaling", "rope_theta")}
    v5["rope_parameters"] = {**raw["rope_scaling"], "rope_theta": 500000.0}
    assert torch.equal(rope_inv_freq(LlamaConfig.from_hf(v5)), expected)
    linear = rope_inv_freq(LlamaConfig.from_hf({**raw, "rope_scaling": {"type": "linear", "factor": 4.0}}))
    plain = rope_inv_freq(LlamaConfig.from_hf({**raw, "rope_scaling": None}))
    assert torch.equal(linear, plain / 4.0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"pooling": "max"}, "unknown pooling 'max'"),
        ({"architectures": ["LlamaForCausalLM"]}, "is a causal LM: serve it as a reranker with --recipe"),
    ],
)
def test_unsupported_configs_fail_clearly(change, message, tmp_path):
    import json

    from rankserve.errors import ModelLoadError

    directory = make_nvidia_reranker(tmp_path)
    cfg = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ModelLoadError, match=message):
        load_model(directory)


def test_model_type_without_architectures(tmp_path):
    import json

    directory = make_nvidia_embedder(tmp_path)
    cfg = json.loads((directory / "config.json").read_text())
    del cfg["architectures"]
    (directory / "config.json").write_text(json.dumps(cfg))
    spec = load_model(directory)
    assert (spec.architecture, spec.kind, spec.family) == ("LlamaBidirectionalModel", "embedder", "llama")


@pytest.mark.parametrize(
    "arch, extra, causal, pooling",
    [
        ("LlamaBidirectionalForSequenceClassification", {"model_type": "llama_bidirec"}, False, "mean"),
        ("LlamaForSequenceClassification", {"model_type": "llama_bidirec"}, False, "mean"),
        ("MistralForSequenceClassification", {"model_type": "mistral", "pooling": "avg"}, False, "mean"),
        ("LlamaForSequenceClassification", {"model_type": "llama"}, True, "last"),
        ("LlamaModel", {"model_type": "llama"}, False, "mean"),
        ("LlamaBidirectionalModel", {"model_type": "llama_bidirec", "is_causal": True}, True, "last"),
    ],
)
def test_causality_rules(arch, extra, causal, pooling, tmp_path):
    """Bidirectional for NVIDIA layouts and base models; HF classifier heads stay causal."""
    from llama_checkpoints import tiny_config

    from rankserve.models import llama

    fields = llama.build(tmp_path, {**tiny_config(), "architectures": [arch], **extra}, arch)
    assert (fields["extra"]["causal"], fields["pooling"]) == (causal, pooling)
    assert fields["family"] == ("mistral" if arch.startswith("Mistral") else "llama")
