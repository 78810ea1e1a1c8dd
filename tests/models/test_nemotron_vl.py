"""The VL reranker (llama-nemotron-rerank-vl-1b-v2 layout) against a reference assembled from
transformers pieces (``SiglipVisionModel``, ``LlamaModel`` with an explicit all-visible 4-D mask),
run the way the published code runs them. fp32, tolerance 1e-4 on logits (measured: ~1e-7)."""

from __future__ import annotations

import pytest
import torch
from conftest import with_engine
from tokenizers import Tokenizer
from vl_checkpoints import QUERY, make_vl_reranker, picture, reference_scores

from rankserve.errors import ConfigError, InputTooLong, ModelLoadError
from rankserve.models.loader import load_model

TOL = 1e-4


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return make_vl_reranker(tmp_path_factory.mktemp("vl") / "llama-nemotron-rerank-vl-tiny")


def ours(directory, texts, images, **config):
    async def work(engine):
        return await engine.rank(QUERY, texts, "END", images=images)

    return with_engine(directory, work, **config)


CASES = {
    "text-only": (["the ls command lists files"], [None]),
    "image-only": ([""], [picture(64, 32, 1)]),  # 2 tiles + thumbnail
    "text+image": (["a chart of disk usage"], [picture(40, 30, 2)]),  # 1 tile
    "mixed batch": (
        ["the ls command lists files", "", "a chart of disk usage", "paris is the capital"],
        [None, picture(64, 32, 1), picture(32, 96, 3), picture(20, 20, 4)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers_reference(vl_dir, case):
    texts, images = CASES[case]
    result = ours(vl_dir, texts, images)
    expected = reference_scores(vl_dir, texts, images)
    assert torch.allclose(torch.tensor(result.scores), expected, atol=TOL), (result.scores, expected)
    assert len(set(round(s, 4) for s in result.scores)) == len(texts)  # the scores are not all alike


def test_image_changes_the_score_and_usage_counts_image_tokens(vl_dir):
    """The image reaches the model (same text with and without it scores differently) and every
    image token is counted: 1 tile = 16 vectors + <img> + </img>."""
    image = picture(40, 30, 2)
    with_image = ours(vl_dir, ["a chart"], [image])
    without = ours(vl_dir, ["a chart"], [None])
    assert abs(with_image.scores[0] - without.scores[0]) > 1e-3
    assert with_image.token_counts[0] - without.token_counts[0] == 16 + 2 + 1  # + the space after </img>
    assert with_image.tokens == with_image.token_counts[0]


def test_config_facts(vl_dir):
    spec = load_model(vl_dir)
    assert spec.kind == "cross-encoder" and spec.family == "nemotron-vl" and spec.temperature == 2.0
    assert spec.vision.tokens_per_tile == 16 and spec.vision.tiles.max_tiles == 4 and spec.vision.tiles.size == 32


def test_truncation_cuts_text_never_image_tokens(vl_dir):
    """END cuts passage text (then query) but never the image's tokens; NONE refuses."""
    long_text = "word " * 400
    result = ours(vl_dir, [long_text], [picture(64, 32, 1)], max_length=120)
    assert result.token_counts == [120]
    with pytest.raises(InputTooLong):

        async def work(engine):
            return await engine.rank(QUERY, [long_text], "NONE", images=[picture(64, 32, 1)])

        with_engine(vl_dir, work, max_length=120)


def test_bf16_keeps_the_order(vl_dir):
    texts, images = CASES["mixed batch"]
    exact = ours(vl_dir, texts, images).scores
    mixed = ours(vl_dir, texts, images, dtype="bfloat16").scores
    assert max(abs(a - b) for a, b in zip(exact, mixed)) < 0.05


def test_tokenizer_without_image_tokens_is_a_load_error(vl_dir, tmp_path):
    import shutil

    from llama_checkpoints import llama_tokenizer

    broken = tmp_path / "broken"
    shutil.copytree(vl_dir, broken)
    llama_tokenizer(broken)  # the plain Llama tokenizer: no image tokens
    assert Tokenizer.from_file(str(broken / "tokenizer.json")).token_to_id("<IMG_CONTEXT>") is None
    with pytest.raises(ModelLoadError, match="no <IMG_CONTEXT> token"):
        load_model(broken)


def test_context_id_must_match_the_tokenizer(vl_dir, tmp_path):
    import json
    import shutil

    broken = tmp_path / "wrong-id"
    shutil.copytree(vl_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["img_context_token_id"] = 7
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="img_context_token_id 7"):
        load_model(broken)


def test_onnxruntime_backend_is_refused_clearly(vl_dir):
    async def work(engine):
        return None

    with pytest.raises(ConfigError, match="onnxruntime exports text models only"):
        with_engine(vl_dir, work, backend="onnxruntime")


def test_generation_default_max_length_is_not_a_limit(vl_dir, tmp_path):
    """An old transformers config carries ``max_length: 20`` (a generation length): as for the text
    Llama models it must not cap the input (the tokenizer's 256 does)."""
    import json
    import shutil

    folder = tmp_path / "gen-default"
    shutil.copytree(vl_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["llm_config"]["max_length"] = 20
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_model(folder).max_length == 256
