"""``rankserve data docs``: the info, pydoc and debref builders on small synthetic sources shaped like
Debian's files, and on the installed ones when present."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import require

from rankserve.cli import main
from rankserve.eval import beir, docsets

FILLER = "It reads each line of its input and writes what it is asked to, in order, to standard output."

INFO = (
    "This is demo.info, produced by makeinfo.\n\n\x1f\n"
    "File: demo.info,  Node: Top,  Next: Context,  Up: (dir)\n\nDemo\n****\n\n* Menu:\n\n* Context::\n\n\x1f\n"
    "File: demo.info,  Node: Context,  Next: Index,  Prev: Top,  Up: Top\n\n"
    f"1 Context lines\n***************\n\nThe option prints lines around each match. {FILLER}\n\n"
    "* Menu:\n\n* Sub::   a submenu entry that is navigation, not text.\n\n\x1f\n"
    "File: demo.info,  Node: Binary files,  Prev: Context,  Up: Top\n\n"
    f"2 Binary files\n**************\n\nBinary input is detected by its null bytes. {FILLER}\n\x1f\n"
    "File: demo.info,  Node: Index,  Prev: Binary files,  Up: Top\n\nIndex\n*****\n\n\x00\x08[index\x00\x08]\n"
    "* Menu:\n\n"
    "* context lines, printing:              Context.             (line   6)\n"
    "* --context:                            Context.             (line   7)\n"
    "* binary files, detection:              Binary files.\n"
    "                                                              (line   5)\n"
    "* output, shared entry:                 Context.             (line   8)\n"
    "* output, shared entry <1>:             Binary files.        (line   9)\n"
    "* external reference:                   (other)Node.         (line   1)\n"
)

PYDOC = """<html><body>
<dl class="py function">
<dt class="sig sig-object py" id="demo.count"><span class="sig-name">count</span>(<em>items</em>)<a class="headerlink" href="#demo.count">\u00b6</a></dt>
<dd><p>Return the number of items in
the sequence. Empty sequences count as zero, and a
generator is consumed.</p>
<p>The result is always a non-negative integer, never None.</p>
</dd></dl>
<dl class="py class">
<dt class="sig sig-object py" id="demo.Box"><span class="sig-name">class Box</span>(<em>size</em>)</dt>
<dd><p>A container that holds a fixed number of things. It refuses more than its size.</p>
<p>Boxes compare equal when they hold the same things in the same order, whatever their size.</p>
<dl class="py method">
<dt class="sig sig-object py" id="demo.Box.put"><span class="sig-name">put</span>(<em>thing</em>)</dt>
<dd><p>Put a thing into the box, after the others.</p>
<p>Raises ValueError when the box is already full, leaving the box as it was before.</p>
</dd></dl>
</dd></dl>
<dl class="py data">
<dt class="sig sig-object py" id="demo.LIMIT">LIMIT</dt>
<dd><p>Short.</p></dd></dl>
</body></html>
"""

DEBREF = f"""Debian Reference

1. Tutorials
    1.1. Console basics
    1.2. Unix-like filesystem

1. Tutorials

1.1. Console basics

    The console is the text screen a system shows before any desktop starts. {FILLER}

1.2. Unix-like filesystem

    Files are arranged in one tree that starts at the root directory. {FILLER}

2. Package management

2.1. Package sources

    Debian fetches packages from the archive mirrors named in the sources list. {FILLER}

2.2. Empty
"""


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    info = tmp_path / "info"
    info.mkdir()
    with gzip.open(info / "demo.info.gz", "wt", encoding="utf-8") as f:
        f.write(INFO)
    pydoc = tmp_path / "library"
    pydoc.mkdir()
    (pydoc / "demo.html").write_text(PYDOC, encoding="utf-8")
    debref = tmp_path / "debref"
    debref.mkdir()
    with gzip.open(debref / "debian-reference.en.txt.gz", "wt", encoding="utf-8") as f:
        f.write(DEBREF)
    return {"info": info, "pydoc": pydoc, "debref": debref}


def test_info_index_entries_find_their_nodes(sources):
    docs = {d.id: d for d in docsets.info_docs(sources["info"])}
    assert set(docs) == {"demo:Context", "demo:Binary_files"}  # Top and the index are not documents;
    # a node name's spaces become "_": ids hold no whitespace, or run files would not read back
    context = docs["demo:Context"]
    assert context.text.startswith("1 Context lines") and "* Menu:" not in context.text
    assert "submenu" not in context.text  # the menu is navigation
    # concept entries only (one-word option names and cross-manual references are dropped);
    # "<1>" marks a second node of the same entry
    assert sorted(context.queries) == ["context lines, printing", "output, shared entry"]
    assert sorted(docs["demo:Binary_files"].queries) == ["binary files, detection", "output, shared entry"]


def test_pydoc_first_sentence_is_the_query_and_is_cut_from_the_document(sources):
    docs = {d.id: d for d in docsets.pydoc_docs(sources["pydoc"])}
    assert set(docs) == {"demo:demo.count", "demo:demo.Box", "demo:demo.Box.put"}  # LIMIT: too short
    count = docs["demo:demo.count"]
    assert count.queries == ["Return the number of items in the sequence."]
    assert count.text.startswith("count(items)")
    assert "Return the number" not in count.text and "Empty sequences count as zero" in count.text
    assert "\u00b6" not in count.text
    box = docs["demo:demo.Box"]
    assert box.queries == ["A container that holds a fixed number of things."]
    assert "Put a thing" not in box.text and "already full" not in box.text  # the method's own text
    assert docs["demo:demo.Box.put"].queries == ["Put a thing into the box, after the others."]
    assert {d.unit for d in docs.values()} == {"demo"}


def test_debref_section_titles_find_their_bodies(sources):
    docs = {d.id: d for d in docsets.debref_docs(sources["debref"] / "debian-reference.en.txt.gz")}
    assert set(docs) == {"debref:1.1", "debref:1.2", "debref:2.1"}  # the empty section is dropped
    assert docs["debref:1.1"].queries == ["Console basics"]
    assert docs["debref:1.1"].text.startswith("The console is the text screen")
    assert "Unix-like" not in docs["debref:1.1"].text  # ends where the next section starts
    assert docs["debref:2.1"].unit == "ch2"


def test_data_docs_writes_beir_sets_split_by_unit(tmp_path, sources):
    out = tmp_path / "out"
    args = ["data", "docs", "--out", str(out), "--info-root", str(sources["info"])]
    args += ["--pydoc-root", str(sources["pydoc"]), "--debref-root", str(sources["debref"])]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"info", "pydoc", "debref"}
    info = beir.load(out / "info")
    shared = [q for q, t in zip(info.query_ids, info.query_texts) if t == "output, shared entry"]
    assert [info.qrels[q] for q in shared] == [{"demo:Binary_files": 1, "demo:Context": 1}]  # both nodes relevant
    assert manifest["variants"]["pydoc"]["queries"] == 3
    # a test split keeps whole chapters together: no chapter is on both sides
    assert main(args + ["--sources", "debref", "--out", str(tmp_path / "split"), "--test-fraction", "0.5"]) == 0
    units = {}
    for side in ("debref-train", "debref-test"):
        ds = beir.load(tmp_path / "split" / side)
        units[side] = {d.split(":")[1].split(".")[0] for d in ds.doc_ids}
        assert all(set(r) <= set(ds.doc_ids) for r in ds.qrels.values())
    assert not units["debref-train"] & units["debref-test"]
    assert units["debref-train"] | units["debref-test"] == {"1", "2"}


def test_data_docs_says_which_package_is_missing(tmp_path, capsys):
    args = ["data", "docs", "--sources", "pydoc", "--out", str(tmp_path / "o"), "--pydoc-root", str(tmp_path / "no")]
    assert main(args) == 2
    assert "python3.11-doc" in capsys.readouterr().err


def test_installed_debian_reference_gives_hundreds_of_sections():
    require(
        Path("/usr/share/debian-reference/debian-reference.en.txt.gz").exists(),
        "no Debian Reference",
        "apt-get install debian-reference-en",
    )
    docs = docsets.debref_docs()
    assert len(docs) > 300 and len({d.unit for d in docs}) >= 10
    assert all(len(d.text.split()) >= docsets.MIN_DOC_WORDS for d in docs)


def test_installed_info_manuals_index_their_nodes():
    require(Path("/usr/share/info/coreutils.info.gz").exists(), "no info manuals", "apt-get install coreutils")
    docs = docsets.info_docs()
    indexed = {d.unit for d in docs if d.queries}
    assert {"coreutils", "grep"} <= indexed and len([d for d in docs if d.queries]) > 200
    # manuals split across files (find.info, find.info-1, ...) are read as one
    assert all(not d.unit.startswith("python") for d in docs)
