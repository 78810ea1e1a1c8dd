"""Truncation policy: passage first then query (pairs); END keeps the start, START keeps the end."""

from __future__ import annotations

import pytest

from rankserve.engine.tokenize import TokenizerPolicy, template_spans
from rankserve.errors import InputTooLong
from rankserve.models.model_dir import default_model_dir

TOKENIZER = str(default_model_dir() / "tokenizer.json")


def policy(limit: int, template: str | None = None) -> TokenizerPolicy:
    return TokenizerPolicy(TOKENIZER, max_length=limit, rerank_template=template, with_type_ids=True)


def words(enc, p):
    return p.tokenizer.decode(enc.ids)


def test_pair_fits_untouched():
    p = policy(64)
    (enc,) = p.pairs("list files", ["the ls command"], "NONE")
    assert words(enc, p) == "list files the ls command"
    first_sep = enc.ids.index(102)
    assert enc.type_ids == [0] * (first_sep + 1) + [1] * (len(enc) - first_sep - 1)


def test_pair_end_cuts_passage_from_the_right_first():
    p = policy(10)  # [CLS] 2 query [SEP] passage... [SEP]
    (enc,) = p.pairs("list files", ["one two three four five six seven eight"], "END")
    assert len(enc) == 10
    assert words(enc, p) == "list files one two three four five"


def test_pair_end_then_cuts_query_when_passage_is_gone():
    p = policy(6)
    (enc,) = p.pairs("one two three four five six", ["seven eight"], "END")
    assert len(enc) == 6
    assert words(enc, p) == "one two three"  # passage emptied, query cut from the right
    assert enc.ids[0] == 101 and enc.ids[-1] == 102


def test_pair_none_raises_with_index_length_limit():
    p = policy(8)
    with pytest.raises(InputTooLong) as info:
        p.pairs("q", ["short", "one two three four five six seven"], "NONE")
    assert (
        "passages[1]" in info.value.message and "length 11 tokens" in info.value.message and "8" in info.value.message
    )


def test_texts_end_keeps_start_and_start_keeps_end():
    p = policy(5)
    text = "one two three four five six"
    (end,) = p.texts([text], "END")
    (start,) = p.texts([text], "START")
    assert words(end, p) == "one two three"
    assert words(start, p) == "four five six"


def test_texts_prefix_is_never_cut():
    p = policy(6)
    (enc,) = p.texts(["one two three four five"], "END", prefix="query: ")
    assert words(enc, p) == "query : one two"


def test_template_spans_and_template_pairs_cut_passage_first():
    text, spans = template_spans("question:{query} \n \n passage:{passage}", query="q1", passage="p1 p2")
    assert text == "question:q1 \n \n passage:p1 p2"
    assert text[slice(*spans["query"])] == "q1" and text[slice(*spans["passage"])] == "p1 p2"
    p = policy(12, "question:{query} \n \n passage:{passage}")
    (enc,) = p.pairs("list files", ["one two three four five six"], "END")
    assert len(enc) == 12
    assert words(enc, p) == "question : list files passage : one two three four"
