"""Long inputs are cut before they are tokenized (``TokenizerPolicy.bound``), with the same result.

Every truncation path (pairs END with and without a template, texts END and START, CHUNK windows
with a window limit, NONE's refusal) is run twice on long texts of several shapes (English words,
one huge word, whitespace runs, CJK without spaces, lines and emoji) and three tokenizer kinds (the
real MiniLM WordPiece, a Llama-3-style byte-level BPE, a SentencePiece-style Unigram with Metaspace):
once as it is, once with the bound switched off (the whole text tokenized, as before). The token
ids must be identical.
"""

from __future__ import annotations

import random

import pytest
from llama_checkpoints import llama_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from rankserve.engine.tokenize import BOUND_MARGIN, TokenizerPolicy
from rankserve.errors import InputTooLong
from rankserve.models.model_dir import default_model_dir

LIMIT = 48
TEMPLATE = "question:{query}\n\npassage:{passage}"
TEMPLATE_AROUND = "Query: {query}\nDocument: {passage}\nRelevant:"  # text after the passage too
EN = (
    "the ls command lists directory contents and df reports disk space while grep searches for "
    "lines matching a pattern in files"
).split()


def unigram_tokenizer(path) -> str:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator([" ".join(EN), "文件目录列表磁盘空间搜索模式" * 3, "naïve café ☕ 🙂"], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B:1 </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module", params=["wordpiece", "bytelevel-bpe", "unigram"])
def tokenizer_file(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "wordpiece":
        return str(default_model_dir() / "tokenizer.json")
    if request.param == "bytelevel-bpe":
        llama_tokenizer(root)
        return str(root / "tokenizer.json")
    return unigram_tokenizer(root / "tokenizer.json")


def long_texts(seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    english = " ".join(rng.choice(EN) for _ in range(20_000))
    return {
        "english": english,
        "one huge word": "x" * 30_000 + " " + english[:5_000],
        "whitespace runs": " " * 20_000 + english[:3_000] + "\n\n\t" * 5_000 + english[:3_000],
        "cjk": "".join(rng.choice("文件目录列表磁盘空间搜索模式") for _ in range(30_000)),
        "lines and emoji": "\n".join(f"{rng.choice(EN)} café ☕ {rng.choice(EN)} 🙂" for _ in range(8_000)),
        "short": "the ls command",
    }


def both(policy: TokenizerPolicy, monkeypatch, call):
    """``call(policy)`` as it is, then with ``bound`` off (every text tokenized whole)."""
    got = call(policy)
    with monkeypatch.context() as m:
        m.setattr(
            TokenizerPolicy, "bound", lambda self, texts, tokens, keep_end=False: (list(texts), [False] * len(texts))
        )
        expected = call(policy)
    return got, expected


def ids(result):
    encoded = result[0] if isinstance(result, tuple) else result
    return [e.ids for e in encoded], [e.type_ids for e in encoded], result[1] if isinstance(result, tuple) else None


@pytest.mark.parametrize("template", [None, TEMPLATE, TEMPLATE_AROUND], ids=["pair", "template", "template-around"])
def test_pairs_keep_the_tokens_the_whole_text_gives(tokenizer_file, template, monkeypatch):
    p = TokenizerPolicy(tokenizer_file, max_length=LIMIT, rerank_template=template, with_type_ids=True)
    texts = long_texts()
    for query in ("list files", texts["english"][:400], texts["cjk"][:200]):
        got, expected = both(p, monkeypatch, lambda q: q.pairs(query, list(texts.values()), "END"))
        assert ids(got) == ids(expected)
        assert all(len(e) <= LIMIT for e in got)
    got, expected = both(p, monkeypatch, lambda q: q.pair_windows("list files", list(texts.values()), limit=3))
    assert ids(got) == ids(expected)
    assert got[1].count(0) == 3  # the long passage gave its three first windows


@pytest.mark.parametrize("truncate", ["END", "START"])
def test_texts_keep_the_tokens_the_whole_text_gives(tokenizer_file, truncate, monkeypatch):
    p = TokenizerPolicy(tokenizer_file, max_length=LIMIT, rerank_template=None, with_type_ids=False)
    texts = list(long_texts(seed=1).values())
    got, expected = both(p, monkeypatch, lambda q: q.texts(texts, truncate, prefix="passage: "))
    assert ids(got) == ids(expected)
    got, expected = both(p, monkeypatch, lambda q: q.text_windows(texts, prefix="passage: ", limit=2))
    assert ids(got) == ids(expected)


class SpyTokenizer:
    """The real tokenizer, recording the length in characters of every input it is given."""

    def __init__(self, real: Tokenizer):
        self.real, self.sizes = real, []

    def encode_batch(self, inputs, **kw):
        self.sizes += [len(x) if isinstance(x, str) else sum(map(len, x)) for x in inputs]
        return self.real.encode_batch(inputs, **kw)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_long_text_is_tokenized_as_a_bounded_prefix():
    p = TokenizerPolicy(
        str(default_model_dir() / "tokenizer.json"), max_length=LIMIT, rerank_template=None, with_type_ids=True
    )
    p.tokenizer = spy = SpyTokenizer(p.tokenizer)
    english = long_texts()["english"]
    (short_end,), (cut,) = p.bound([english], LIMIT)
    assert cut and len(short_end) < 2_000 < len(english)
    head, _, last_word = short_end.rpartition(" ")
    assert english.startswith(head) and english[len(head)] in " \n\t"  # cut between words
    assert english.endswith(" " + last_word)  # and the text's last word, as the template meets it
    (short_start,), _ = p.bound([english], LIMIT, keep_end=True)
    first_word, _, tail = short_start.partition(" ")
    assert english.startswith(first_word + " ") and english.endswith(tail) and len(short_start) < 2_000
    spy.sizes.clear()
    p.pairs("list files", [english] * 4, "END")
    assert spy.sizes and max(spy.sizes) < 4_000  # nothing near the whole text's length was tokenized


def test_none_still_refuses_a_long_text_with_its_exact_length(tokenizer_file):
    p = TokenizerPolicy(tokenizer_file, max_length=LIMIT, rerank_template=None, with_type_ids=True)
    english = long_texts()["english"]
    exact = len(p.tokenizer.encode("list files", english).ids)
    with pytest.raises(
        InputTooLong, match=rf"passages\[1\]: input length {exact} tokens exceeds the maximum allowed {LIMIT}"
    ):
        p.pairs("list files", ["short", english], "NONE")
    assert BOUND_MARGIN > 0
