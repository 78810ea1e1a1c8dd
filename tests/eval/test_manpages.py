"""The man-page dataset builder: parsing, chunking, a synthetic man tree, and real installed pages."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import require

from rankserve.eval import beir
from rankserve.eval.manpages import BuildOptions, Chunker, build, list_pages, parse, render, renderer

MAN = Path("/usr/share/man")


@pytest.fixture
def man_renderer() -> None:
    require(
        bool(shutil.which("groff") or shutil.which("mandoc")),
        "no man renderer (groff or mandoc) on PATH",
        "apt-get install groff-base",
    )


@pytest.fixture
def man_tree_installed() -> None:
    require(
        (MAN / "man1" / "ls.1.gz").is_file() and (MAN / "de" / "man1" / "ls.1.gz").is_file(),
        f"English and German man pages not installed under {MAN}",
        "apt-get install manpages manpages-dev manpages-de manpages-fr groff-base",
    )


# Skipped locally with the install line when missing; a failure when CI is set (conftest.require).
needs_groff = pytest.mark.usefixtures("man_renderer")
needs_tree = pytest.mark.usefixtures("man_tree_installed")


@pytest.mark.parametrize(
    "ci, outcome",
    [
        (None, "skip"),
        ("", "skip"),
        ("0", "skip"),
        ("false", "skip"),
        ("False", "skip"),
        ("true", "fail"),
        ("1", "fail"),
        ("yes", "fail"),
    ],
)
def test_require_skips_locally_and_fails_in_ci(monkeypatch, ci, outcome):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = {"skip": pytest.skip.Exception, "fail": pytest.fail.Exception}[outcome]
    with pytest.raises(expected) as info:
        require(False, "no frobnicator", "apt-get install frob")
    assert "no frobnicator" in str(info.value) and "apt-get install frob" in str(info.value)
    require(True, "never shown", "never run")  # a met prerequisite neither skips nor fails


RENDERED = """LS(1)                         User Commands                        LS(1)

NAME
       ls - list directory contents

SYNOPSIS
       ls  [OPTION]...  [FILE]...

DESCRIPTION
       List  information  about the FILEs (the current directory by default).

GNU coreutils 9.1                 September 2022                       LS(1)
"""


def test_parse_splits_name_line_from_the_rest():
    page = parse("ls.1", RENDERED)
    assert page.description == "list directory contents"
    assert page.text.startswith("SYNOPSIS\nls [OPTION]... [FILE]...")
    assert "NAME" not in page.text and "GNU coreutils" not in page.text and "LS(1)" not in page.text


@pytest.mark.parametrize(
    "name_line, expected",
    [
        ("cp, mv - copy and move files", "copy and move files"),
        ("ssh \u2014 OpenSSH remote login client", "OpenSSH remote login client"),
        ("git-commit - Record changes - to the repository", "Record changes - to the repository"),
        ("nodescription", None),
    ],
)
def test_parse_name_variants(name_line, expected):
    page = parse("x.1", RENDERED.replace("ls - list directory contents", name_line))
    assert (page.description if page else None) == expected


def test_chunker_keeps_every_word_within_the_token_limit():
    chunker = Chunker(32)
    text = "\n".join(f"line {i} " + "word " * (i % 7) for i in range(40)) + "\n" + "long " * 100
    chunks = chunker.split(text)
    assert len(chunks) > 3
    assert all(n <= 32 for n in chunker.count(chunks))
    assert " ".join(chunks).split() == text.split()


def roff(name: str, heading: str, description: str, body: str) -> bytes:
    return (
        f'.TH {name.upper()} 1 "2024" "test" "User Commands"\n.SH {heading}\n{name} \\- {description}\n'
        f".SH SYNOPSIS\n.B {name}\n[\\fIOPTION\\fR]\n.SH DESCRIPTION\n{body}\n"
    ).encode()


@pytest.fixture
def man_tree(tmp_path) -> Path:
    """A tiny man tree: English and German pages, an alias symlink and a .so stub (both skipped)."""
    root = tmp_path / "man"
    pages = {
        "frob": (
            "frobnicate the widgets",
            "Widgets frobnizieren",
            "Frobnicates every widget found in the current directory, recursively.",
        ),
        "blink": (
            "make the lights blink",
            "die Lichter blinken lassen",
            "Blinks the keyboard lights a number of times given on the command line.",
        ),
        "tally": (
            "count lines in files",
            "Zeilen in Dateien zählen",
            "Counts the lines of each file and prints a total at the end.",
        ),
    }
    for lang, heading in (("en", "NAME"), ("de", "BEZEICHNUNG")):
        folder = (root if lang == "en" else root / lang) / "man1"
        folder.mkdir(parents=True)
        for name, (en, de, body) in pages.items():
            (folder / f"{name}.1.gz").write_bytes(gzip.compress(roff(name, heading, en if lang == "en" else de, body)))
        (folder / "frobalias.1.gz").symlink_to(folder / "frob.1.gz")
        (folder / "stub.1.gz").write_bytes(gzip.compress(b".so man1/frob.1\n"))
    return root


def test_list_pages_skips_aliases(man_tree):
    assert sorted(list_pages(man_tree, "en", ["1"])) == ["blink.1", "frob.1", "stub.1", "tally.1"]
    assert render(man_tree / "man1" / "stub.1.gz", ["true"]) is None  # .so stubs are never rendered


@needs_groff
def test_build_synthetic_tree(man_tree, tmp_path):
    out = tmp_path / "out"
    opts = BuildOptions(
        langs=["en", "de"],
        cross=["de"],
        sections=["1"],
        max_pages=0,
        passage_tokens=16,
        man_root=man_tree,
        progress=False,
    )
    manifest = build(out, opts)
    assert set(manifest["variants"]) == {f"{g}/{v}" for g in ("pages", "passages") for v in ("en", "de", "de-en")}
    en = beir.load(out / "pages" / "en")
    assert en.doc_ids == ["blink.1", "frob.1", "tally.1"]
    assert dict(zip(en.query_ids, en.query_texts))["en:frob.1"] == "frobnicate the widgets"
    assert en.qrels["en:frob.1"] == {"frob.1": 1}
    assert "frob" not in dict(zip(en.query_ids, en.query_texts))["en:frob.1"].split()
    assert "frobnicate the widgets" not in en.doc_texts[1] and "Frobnicates every widget" in en.doc_texts[1]

    cross = beir.load(out / "pages" / "de-en")
    assert dict(zip(cross.query_ids, cross.query_texts))["de:tally.1"] == "Zeilen in Dateien zählen"
    assert cross.doc_texts == en.doc_texts  # English documents
    assert cross.query_lang["de:tally.1"] == "de" and cross.doc_lang["tally.1"] == "en"

    passages = beir.load(out / "passages" / "en")
    assert len(passages.doc_ids) > 3 and passages.has_passages
    assert {passages.doc_page[d] for d in passages.doc_ids} == set(en.doc_ids)
    assert passages.qrels == en.qrels  # qrels name pages


@needs_groff
def test_duplicate_descriptions_are_not_queries(man_tree, tmp_path):
    (man_tree / "man1" / "twin.1.gz").write_bytes(gzip.compress(roff("twin", "NAME", "count lines in files", "Twin.")))
    build(
        tmp_path / "out",
        BuildOptions(
            langs=["en"],
            cross=[],
            sections=["1"],
            max_pages=0,
            granularity=["pages"],
            man_root=man_tree,
            english="all",
            progress=False,
        ),
    )
    ds = beir.load(tmp_path / "out" / "pages" / "en")
    assert "twin.1" in ds.doc_ids and "en:twin.1" not in ds.query_ids and "en:tally.1" not in ds.query_ids


@needs_groff
@needs_tree
@pytest.mark.parametrize(
    "lang, description", [("en", "list directory contents"), ("de", "Verzeichnisinhalte auflisten")]
)
def test_real_ls_page(lang, description):
    root = MAN if lang == "en" else MAN / lang
    page = parse("ls.1", render(root / "man1" / "ls.1.gz", renderer()))
    assert page.description == description
    assert page.text.split("\n", 1)[0] in ("SYNOPSIS", "ÜBERSICHT")
    assert "--all" in page.text


@needs_groff
@needs_tree
def test_real_tree_build_is_deterministic(tmp_path):
    opts = dict(langs=["en", "de"], cross=["de"], max_pages=5, man_root=MAN, progress=False)
    first, second = tmp_path / "a", tmp_path / "b"
    m1, m2 = build(first, BuildOptions(**opts)), build(second, BuildOptions(**opts))
    assert m1["variants"] == m2["variants"]
    for f in sorted(first.rglob("*.jsonl")) + sorted(first.rglob("*.tsv")):
        assert f.read_bytes() == (second / f.relative_to(first)).read_bytes(), f
    assert m1["variants"]["pages/en"]["pages"] == 5
    smaller = build(tmp_path / "c", BuildOptions(**{**opts, "max_pages": 3, "granularity": ["pages"]}))
    assert smaller["variants"]["pages/en"]["pages"] == 3
    three = set(beir.load(tmp_path / "c" / "pages" / "en").doc_ids)
    assert three < set(beir.load(first / "pages" / "en").doc_ids)  # a smaller sample is a subset
    assert json.loads((first / "manifest.json").read_text())["renderer"] in ("groff", "mandoc")


def test_split_by_page_is_disjoint_deterministic_and_the_same_in_every_variant():
    from rankserve.eval.beir import held_out

    ids = [f"page{i}.1" for i in range(2000)]
    test = {i for i in ids if held_out(i, 0.2, seed=0)}
    assert 0.17 < len(test) / len(ids) < 0.23
    assert test == {i for i in ids if held_out(i, 0.2, seed=0)}  # deterministic
    assert test != {i for i in ids if held_out(i, 0.2, seed=1)}  # the seed matters
    assert {i for i in ids if held_out(i, 0.1, seed=0)} <= test  # a smaller fraction holds out a subset


@needs_groff
def test_build_with_a_test_split(man_tree, tmp_path):
    """Each variant becomes -train and -test: disjoint pages, queries only of their own split's
    pages, and a page is on the same side in every variant (cross-lingual included)."""
    from rankserve.eval.beir import held_out

    pages = {"blink.1", "frob.1", "tally.1"}
    seed = next(s for s in range(100) if 0 < sum(held_out(p, 0.5, s) for p in pages) < 3)
    out = tmp_path / "out"
    manifest = build(
        out,
        BuildOptions(
            langs=["en", "de"],
            cross=["de"],
            sections=["1"],
            max_pages=0,
            passage_tokens=16,
            man_root=man_tree,
            progress=False,
            seed=seed,
            test_fraction=0.5,
        ),
    )
    assert set(manifest["variants"]) == {
        f"{g}/{v}-{s}" for g in ("pages", "passages") for v in ("en", "de", "de-en") for s in ("train", "test")
    }
    for variant in ("en", "de", "de-en"):
        train, test = beir.load(out / "pages" / f"{variant}-train"), beir.load(out / "pages" / f"{variant}-test")
        assert set(train.doc_ids).isdisjoint(test.doc_ids) and set(train.doc_ids) | set(test.doc_ids) == pages
        assert set(test.doc_ids) == {p for p in pages if held_out(p, 0.5, seed)}
        for ds in (train, test):
            assert all(set(rel) <= set(ds.doc_ids) for rel in ds.qrels.values())
        passages = beir.load(out / "passages" / f"{variant}-test")
        assert {passages.doc_page[d] for d in passages.doc_ids} == set(test.doc_ids)


def test_split_pages_keeps_each_page_whole_on_one_side():
    """Dataset.split_pages (the train command's validation split): documents go with their page,
    queries with their relevant pages, a query whose relevant pages straddle the split is dropped."""
    from rankserve.eval.beir import Dataset, held_out

    pages = [f"p{i}.1" for i in range(40)]
    docs = [f"{p}#{n}" for p in pages for n in range(3)]
    qrels = {f"q{i}": {p: 1} for i, p in enumerate(pages)}
    seed = "validation:0"
    out = [p for p in pages if held_out(p, 0.3, seed)]
    kept = [p for p in pages if not held_out(p, 0.3, seed)]
    qrels["both"] = {out[0]: 1, kept[0]: 1}
    ds = Dataset(
        "d",
        docs,
        [f"text {d}" for d in docs],
        list(qrels),
        [f"query {q}" for q in qrels],
        qrels,
        {d: d.split("#")[0] for d in docs},
    )
    rest, val, dropped = ds.split_pages(0.3, seed)
    assert dropped == 1 and "both" not in rest.query_ids + val.query_ids
    assert {d.split("#")[0] for d in val.doc_ids} == set(out) and {d.split("#")[0] for d in rest.doc_ids} == set(kept)
    assert len(val.doc_ids) == 3 * len(out) and val.doc_texts[0] == f"text {val.doc_ids[0]}"
    assert {next(iter(val.qrels[q])) for q in val.query_ids} == set(out)
    assert {next(iter(rest.qrels[q])) for q in rest.query_ids} == set(kept)
    assert rest.split_pages(0.3, seed)[1].doc_ids == []  # deterministic: nothing left to hold out
