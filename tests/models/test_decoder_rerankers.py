"""Decoder rerankers (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2 recipes), the Qwen2 /
Qwen3 / Gemma backbones, and Qwen3-Embedding-style embedders, against transformers.

Reference for a recipe: the transformers causal LM on the exact prompt string, its last-position
logits, z[positive] - z[negative] (or z[positive]). Tolerance: float32, 1e-4 absolute.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import LiveServer, with_engine
from decoder_checkpoints import make_decoder, reference
from tokenizers import Tokenizer

from rankserve.config import RECIPE_NAMES, load_config
from rankserve.engine.engine import Engine
from rankserve.errors import ModelLoadError
from rankserve.metrics import Metrics
from rankserve.models.loader import load_model
from rankserve.models.recipes import QWEN3_INSTRUCTION, QWEN3_PREFIX, RECIPES, RecipeChoice

QUERY = "how do i list files in a directory"
PASSAGES = [
    "the ls command lists directory contents, sorted by name",
    "paris is the capital and largest city of france",
    "show disk space usage with df and du",
    "banana is a fruit rich in potassium; a small yellow fruit",
    "ls",
]
TOL = 1e-4


async def _scores(engine, query, passages):
    return (await engine.rank(query, passages, "END")).scores


def engine_scores(directory, passages=PASSAGES, query=QUERY, **config) -> list[float]:
    return with_engine(directory, lambda e: _scores(e, query, passages), **config)


async def _vectors(engine, texts):
    return (await engine.embed(texts, "passage", "END", None)).vectors


def reference_scores(directory, family, template, positive, negative, passages=PASSAGES, query=QUERY):
    """The causal LM's own answer-token logits at the last position of each exact prompt string
    (``template``: a format string, or a function of (query, passage))."""
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    pos = tok.encode(positive, add_special_tokens=False).ids[0]
    neg = None if negative is None else tok.encode(negative, add_special_tokens=False).ids[0]
    model = reference(directory, family)
    out = []
    with torch.no_grad():
        for p in passages:
            prompt = template(query, p) if callable(template) else template.format(query=query, passage=p)
            ids = tok.encode(prompt).ids
            z = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            out.append(float(z[pos] - (z[neg] if neg is not None else 0.0)))
    return out


CASES = [  # recipe, family, tied embeddings (the LM head read from embed_tokens) or a separate lm_head
    ("qwen3-reranker", "qwen3", True),
    ("mxbai-rerank-v2", "qwen2", False),
    ("bge-reranker-gemma", "gemma", True),
]


@pytest.mark.parametrize("recipe, family, tied", CASES)
def test_recipe_logits_equal_the_causal_lms_answer_logits(tmp_path, recipe, family, tied):
    directory = make_decoder(tmp_path / "m", family, tied=tied)
    r = RECIPES[recipe]
    template = r.template(None, None)
    expected = reference_scores(directory, family, template, r.positive, r.negative)
    got = engine_scores(directory, recipe=recipe)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= TOL, (got, expected)
    assert len(set(round(x, 3) for x in expected)) == len(PASSAGES)  # the random model tells them apart
    # batch invariance: each pair alone scores what it scored in the batch (different lengths, packed)
    alone = [engine_scores(directory, [p], recipe=recipe)[0] for p in PASSAGES[:2]]
    assert alone == pytest.approx(got[:2], abs=1e-5)
    spec = load_model(directory, choice=RecipeChoice(recipe))
    assert spec.kind == "cross-encoder" and spec.pooling == "last" and spec.extra == {"causal": True, "recipe": recipe}
    assert tuple(spec.module.score.weight.shape) == (1, 64)  # the LM head is gone; one row is kept


def test_qwen3_instruction_and_folder_name_detection(tmp_path):
    directory = make_decoder(tmp_path / "Qwen3-Reranker-tiny", "qwen3")
    assert QWEN3_INSTRUCTION in load_model(directory).rerank_template  # detected from the folder's name
    task = "Given a shell question, find the man page that answers it {braces kept}"
    assert QWEN3_INSTRUCTION not in RECIPES["qwen3-reranker"].template(task, None)

    def prompt(q: str, p: str) -> str:  # Qwen3-Reranker's model card, written out
        return (
            QWEN3_PREFIX
            + f"<Instruct>: {task}\n<Query>: {q}\n<Document>: {p}"
            + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )

    expected = reference_scores(directory, "qwen3", prompt, "yes", "no")
    assert engine_scores(directory, instruction=task) == pytest.approx(expected, abs=TOL)


def test_long_passages_are_cut_inside_the_passage_never_the_prompt(tmp_path):
    directory = make_decoder(tmp_path / "m", "qwen3")
    spec_template = RECIPES["qwen3-reranker"].template(None, None)
    long = " ".join(PASSAGES * 40)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    suffix_ids = tok.encode("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n").ids
    e = Engine.load(
        load_config(
            {
                "model": str(directory),
                "dtype": "float32",
                "warmup": False,
                "max_length": 200,
                "recipe": "qwen3-reranker",
            },
            environ={},
        ),
        Metrics(),
    )
    [encoded] = e.policy.pairs(QUERY, [long], "END")
    assert len(encoded.ids) == 200 and list(encoded.ids[-len(suffix_ids) :]) == suffix_ids
    prefix_ids = tok.encode(spec_template.split("\n<Query>")[0]).ids  # up to a pre-token boundary
    assert list(encoded.ids[: len(prefix_ids)]) == prefix_ids
    # and the score is the LM's on exactly those ids
    with torch.no_grad():
        z = reference(directory, "qwen3")(input_ids=torch.tensor([list(encoded.ids)])).logits[0, -1]
    yes, no = (tok.encode(w, add_special_tokens=False).ids[0] for w in ("yes", "no"))
    got = engine_scores(directory, [long], max_length=200, recipe="qwen3-reranker")[0]
    assert got == pytest.approx(float(z[yes] - z[no]), abs=TOL)


def test_yes_no_recipe_with_a_custom_prompt_on_a_llama_causal_lm(tmp_path):
    directory = make_decoder(tmp_path / "m", "llama", tied=False)
    template = "Query: {query}\nDocument: {passage}\nRelevant (yes or no)?"
    expected = reference_scores(directory, "llama", template, "yes", "no")
    got = engine_scores(directory, recipe="yes-no", rerank_template=template, score_tokens="yes,no")
    assert got == pytest.approx(expected, abs=TOL)
    only_yes = reference_scores(directory, "llama", template, "Yes", None)
    assert engine_scores(directory, recipe="yes-no", rerank_template=template, score_tokens="Yes") == pytest.approx(
        only_yes, abs=TOL
    )


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma"])
def test_sequence_classification_folders_equal_transformers(tmp_path, family):
    """Folders already converted to ``*ForSequenceClassification`` (one label, last token, causal)."""
    directory = make_decoder(tmp_path / "m", family, "ForSequenceClassification")
    template = "{query}\n{passage}"
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    model = reference(directory, family, "ForSequenceClassification")
    with torch.no_grad():
        expected = [
            float(model(input_ids=torch.tensor([tok.encode(template.format(query=QUERY, passage=p)).ids])).logits[0, 0])
            for p in PASSAGES
        ]
    assert engine_scores(directory, rerank_template=template) == pytest.approx(expected, abs=TOL)
    with pytest.raises(ModelLoadError, match="give its prompt with --recipe"):
        load_model(directory)  # no NVIDIA default prompt for these families


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "gemma"])
def test_base_models_embed_like_transformers_last_token(tmp_path, family):
    """Qwen3-Embedding-style: causal, the last real token pooled, L2-normalized; Qwen3 queries get
    its instruct prefix."""
    directory = make_decoder(tmp_path / "m", family, "Model")
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    spec = load_model(directory)
    assert (spec.kind, spec.pooling, spec.extra["causal"]) == ("embedder", "last", True)
    if family == "qwen3":
        assert spec.query_prefix.startswith("Instruct: ") and spec.query_prefix.endswith("\nQuery:")
    model = reference(directory, family, "Model")
    texts = PASSAGES[:3]
    got = torch.as_tensor(with_engine(directory, lambda e: _vectors(e, texts)))
    with torch.no_grad():
        expected = torch.stack(
            [model(input_ids=torch.tensor([tok.encode(t).ids])).last_hidden_state[0, -1] for t in texts]
        )
    expected = torch.nn.functional.normalize(expected, dim=-1)
    assert (got - expected).abs().max() <= TOL


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "is a causal LM: serve it as a reranker with --recipe"),
        ({"recipe": "yes-no", "score_tokens": "yes,no"}, "needs --rerank-template"),
        ({"recipe": "yes-no", "rerank_template": "{query} {passage}"}, "needs --score-tokens"),
        ({"recipe": "bge-reranker-gemma", "instruction": "x"}, "takes no --instruction"),
        ({"recipe": "qwen3-reranker", "rerank_template": "{query} {passage}"}, "has its own prompt"),
        ({"recipe": "yes-no", "rerank_template": "{query} {passage}", "score_tokens": "yes,no,maybe"}, "POSITIVE"),
    ],
)
def test_recipe_mistakes_are_clear_load_errors(tmp_path, config, message):
    directory = make_decoder(tmp_path / "m", "llama")
    choice = RecipeChoice(
        config.get("recipe"), config.get("instruction"), config.get("score_tokens"), config.get("rerank_template")
    )
    with pytest.raises(ModelLoadError, match=message):
        load_model(directory, choice=choice)


def test_recipes_on_encoders_are_refused(bert_ce_dir):
    with pytest.raises(ModelLoadError, match="for decoder rerankers"):
        load_model(bert_ce_dir, choice=RecipeChoice("qwen3-reranker"))


def test_config_lists_every_recipe():
    assert set(RECIPE_NAMES) == set(RECIPES)
    with pytest.raises(Exception, match="choose one of"):
        load_config({"recipe": "qwen4"}, environ={})


def test_served_over_http_with_the_recipe_flag(tmp_path):
    """`rankserve serve --recipe mxbai-rerank-v2` end to end: /v1/ranking's logits are the LM's."""
    directory = make_decoder(tmp_path / "m", "qwen2", tied=False)
    r = RECIPES["mxbai-rerank-v2"]
    expected = reference_scores(directory, "qwen2", r.template(None, None), r.positive, r.negative)
    import httpx

    with LiveServer(model=str(directory), recipe="mxbai-rerank-v2") as server:
        body = httpx.post(
            server.url + "/v1/ranking", json={"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]}
        ).json()
    by_index = {x["index"]: x["logit"] for x in body["rankings"]}
    assert [by_index[i] for i in range(len(PASSAGES))] == pytest.approx(expected, abs=TOL)
    assert [x["index"] for x in body["rankings"]] == sorted(range(len(PASSAGES)), key=lambda i: -expected[i])
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    shutil.rmtree(directory)
