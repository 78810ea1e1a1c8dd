"""ModernBERT cross-encoders and embedders against transformers on tiny random checkpoints.

Three layers, global attention every second layer from the first, a local window of 8 (4 either
side) so that passages of 20-40 tokens exercise the sliding window; every weight perturbed so the
LayerNorms and biases matter. Reference: transformers' ModernBertForSequenceClassification /
ModernBertModel on a padded batch with its attention mask. Tolerance: float32, 1e-4.
"""

from __future__ import annotations

import json

import pytest
import torch
from checkpoints import WORDS, make_modernbert
from conftest import with_engine
from tokenizers import Tokenizer

from rankserve.models.loader import load_model

QUERY = "how do i list the files in a directory"
PASSAGES = [" ".join(WORDS[i : i + n]) for i, n in ((0, 30), (20, 8), (40, 38), (5, 3), (60, 25))]
TOL = 1e-4


def padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    input_ids = torch.tensor([x + [1] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return input_ids, mask


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_cross_encoder_equals_transformers(tmp_path, pooling):
    directory, model = make_modernbert(tmp_path / "ce", "ce", pooling)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = [tok.encode(QUERY, p).ids for p in PASSAGES]
    assert max(map(len, ids)) > 2 * 4 + 1  # longer than the local window: the sliding mask matters
    with torch.no_grad():
        expected = model(*padded(ids)).logits[:, 0]
    got = with_engine(directory, lambda e: e.rank(QUERY, PASSAGES, "END"))
    assert max(abs(a - b) for a, b in zip(got.scores, expected.tolist())) <= TOL
    spec = load_model(directory)
    assert (spec.family, spec.kind, spec.pooling) == ("modernbert", "cross-encoder", pooling)


def test_old_config_format_loads_the_same(tmp_path):
    """transformers 4.x configs (global_rope_theta, local_rope_theta, global_attn_every_n_layers)."""
    directory, model = make_modernbert(tmp_path / "ce", "ce")
    new = with_engine(directory, lambda e: e.rank(QUERY, PASSAGES, "END")).scores
    cfg = json.loads((directory / "config.json").read_text())
    assert cfg["layer_types"] == ["full_attention", "sliding_attention", "full_attention"]
    old = {k: v for k, v in cfg.items() if k not in ("layer_types", "rope_parameters")}
    old.update(global_attn_every_n_layers=2, global_rope_theta=160000.0, local_rope_theta=10000.0)
    (directory / "config.json").write_text(json.dumps(old))
    assert with_engine(directory, lambda e: e.rank(QUERY, PASSAGES, "END")).scores == pytest.approx(new, abs=1e-6)
    # and the window and thetas matter: a wrong local theta changes the scores
    (directory / "config.json").write_text(json.dumps({**old, "local_rope_theta": 160000.0}))
    changed = with_engine(directory, lambda e: e.rank(QUERY, PASSAGES, "END")).scores
    assert max(abs(a - b) for a, b in zip(changed, new)) > 1e-3


def test_embedder_equals_transformers_mean_pooled(tmp_path):
    directory, model = make_modernbert(tmp_path / "bi", "bi")
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = [tok.encode(t).ids for t in PASSAGES]
    input_ids, mask = padded(ids)
    with torch.no_grad():
        hidden = model(input_ids, mask).last_hidden_state
    expected = torch.nn.functional.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    got = with_engine(directory, lambda e: e.embed(PASSAGES, None, "END", None)).vectors
    assert (torch.as_tensor(got) - expected).abs().max() <= TOL
    spec = load_model(directory)
    assert (spec.family, spec.kind, spec.pooling) == ("modernbert", "embedder", "mean")
