"""BEIR sets from Debian's documentation beyond the man pages, for training and out-of-domain tests.

Each source gives documents with the queries that find them, built from the document's own
structure (never written by hand), and a *unit* to split by (a whole manual, module page or chapter,
so that no held-out document shares a unit with a trained one):

- ``info``: GNU Info manuals (``/usr/share/info``): query = an entry of the manual's index
  (``grep``: "context lines, printing"; entries of two words or more), relevant = every node the entry points to, document = the
  node's text with its menu. Unit: the manual. The Python manual is left to ``pydoc``.
- ``pydoc``: Python's library reference (Debian's ``python3.11-doc``, HTML): query = the first
  sentence of an API entry's description ("Return the filename corresponding to the controlling
  terminal of the process."), document = the entry's signature and the rest of its description (the
  first sentence removed). Unit: the module page.
- ``debref``: the Debian Reference (``debian-reference-en``, plain text; ``-de``/``-fr`` too):
  query = a section's title ("Securing the root password"), document = its body. Unit: the chapter.

A query text that appears for more than ``MAX_RELEVANT`` documents is too generic to judge and is
dropped; otherwise every document it names is relevant. Output rows are sorted; documents and
queries carry ``metadata.lang``.
"""

from __future__ import annotations

import gzip
import html.parser
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rankserve.eval import beir

SOURCES = ("info", "pydoc", "debref")
MAX_RELEVANT = 3
MIN_DOC_WORDS = 12  # shorter documents (a one-line stub, a bare signature) have nothing to rank by


@dataclass
class Doc:
    id: str
    unit: str  # what splits keep together
    text: str
    queries: list[str] = field(default_factory=list)


# -- info manuals ------------------------------------------------------------------------------

INFO_FILE = re.compile(r"^(?P<name>.+?)\.info(?:-(?P<part>\d+))?(?:\.gz)?$")
INFO_HEADER = re.compile(r"^File: [^,]+,\s+Node: ([^,\n]+)")
INDEX_ENTRY = re.compile(r"^\* (?P<entry>.+?):\s+(?P<node>[^(\s][^\n]*?)\.(?:\s+\(line\s+\d+\))?\s*$")


def _info_text(files: list[Path]) -> str:
    return "".join(gzip.open(f, "rt", encoding="utf-8", errors="replace").read() for f in files)


def info_manuals(root: Path) -> dict[str, list[Path]]:
    """Manual name -> its files (``find.info.gz``, ``find.info-1.gz``, ...), main file first."""
    manuals: dict[str, list[Path]] = {}
    for f in sorted(root.glob("*.info*")):
        if m := INFO_FILE.match(f.name):
            manuals.setdefault(m["name"], []).append(f)
    for files in manuals.values():
        files.sort(key=_info_part)
    return manuals


def _info_part(path: Path) -> int:
    m = INFO_FILE.match(path.name)
    return int(m["part"]) if m and m["part"] else 0


def _node_id(manual: str, node: str) -> str:
    """``manual:Node_name``: node names hold spaces, which ids may not (``beir.check_id``)."""
    return f"{manual}:{'_'.join(node.split())}"


def info_docs(root: Path = Path("/usr/share/info"), exclude: Iterable[str] = ("python",)) -> list[Doc]:
    docs: dict[str, Doc] = {}
    entries: list[tuple[str, str, str]] = []  # (manual, entry, node)
    for manual, files in info_manuals(root).items():
        if any(manual.startswith(x) for x in exclude):
            continue
        for chunk in _info_text(files).split("\x1f"):
            lines = chunk.strip("\n").split("\n")
            head = INFO_HEADER.match(lines[0]) if lines else None
            if head is None:
                continue
            node, body = head[1].strip(), lines[1:]
            if any(line.strip() == "[index ]" or line.startswith("\0\b[index") for line in body):
                # the index node: Texinfo 6 marks it; its "* entry: node." lines may wrap the line ref
                for line in body:
                    if (m := INDEX_ENTRY.match(line)) and ":" not in m["node"]:
                        entries.append((manual, re.sub(r"\s*<\d+>$", "", m["entry"]).strip(), m["node"].strip()))
                continue
            text = "\n".join(line for line in body if not line.startswith("\0")).strip()
            text = text.split("\n* Menu:")[0].strip()
            if len(text.split()) >= MIN_DOC_WORDS and node != "Top":
                docs[_node_id(manual, node)] = Doc(_node_id(manual, node), manual, text)
    for manual, entry, node in entries:
        doc = docs.get(_node_id(manual, node))
        # concept entries ("clock skew", "context lines, printing"); one-word entries are mostly
        # option and function names, which only test exact-term match
        if doc is not None and len(entry.split()) >= 2 and not entry.startswith("-"):
            doc.queries.append(entry)
    return list(docs.values())


# -- Python library reference --------------------------------------------------------------------

FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s+(?=[A-Z(`'\"])|$)(.*)$", re.S)
PARAGRAPH = "\0"  # marks a paragraph start in the collected text (HTML source newlines are just spaces)


class _PyEntries(html.parser.HTMLParser):
    """Collects ``<dl class="py ...">`` entries: signature (``dt``) and description (``dd``) text.
    A class's ``dd`` holds its methods' ``dl``: their text goes to them, not to the class."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.entries: list[dict] = []
        self.stack: list[dict] = []  # open py entries, innermost last
        self.dl_depth: list[bool] = []  # per open <dl>: is it a py entry
        self.part: str | None = None  # "sig" / "desc" of the innermost entry
        self.skip = 0  # inside a headerlink anchor (the pilcrow)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "dl":
            is_py = (a.get("class") or "").startswith("py ")
            self.dl_depth.append(is_py)
            if is_py:
                self.stack.append({"id": None, "sig": [], "desc": []})
                self.part = None
        elif tag == "dt" and self.stack and self.dl_depth and self.dl_depth[-1]:
            entry = self.stack[-1]
            entry["id"] = entry["id"] or a.get("id")
            self.part = "sig"
        elif tag == "dd" and self.stack and self.dl_depth and self.dl_depth[-1]:
            self.part = "desc"
        elif tag == "a" and "headerlink" in (a.get("class") or ""):
            self.skip += 1
        elif tag in ("p", "li", "pre", "br") and self.part == "desc":
            self.stack[-1]["desc"].append(PARAGRAPH)

    def handle_endtag(self, tag):
        if tag == "dl" and self.dl_depth:
            if self.dl_depth.pop():
                self.entries.append(self.stack.pop())
                self.part = "desc" if self.stack else None
        elif tag == "dt" and self.part == "sig":
            self.stack[-1]["sig"].append(" ")
            self.part = None
        elif tag == "a" and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if self.stack and self.part and not self.skip:
            self.stack[-1][self.part].append(data)


def pydoc_docs(root: Path = Path("/usr/share/doc/python3.11/html/library")) -> list[Doc]:
    docs = []
    for page in sorted(root.glob("*.html")):
        parser = _PyEntries()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for e in parser.entries:
            if not e["id"]:
                continue
            paras = [" ".join(p.split()) for p in "".join(e["desc"]).split(PARAGRAPH)]
            paras = [p for p in paras if p]
            m = FIRST_SENTENCE.match(paras[0]) if paras else None
            if m is None:
                continue
            first, rest = m[1], "\n".join([m[2].strip(), *paras[1:]]).strip()
            sig = " ".join("".join(e["sig"]).split())
            if not 4 <= len(first.split()) <= 40 or len(rest.split()) + len(sig.split()) < MIN_DOC_WORDS:
                continue
            docs.append(Doc(f"{page.stem}:{e['id']}", page.stem, f"{sig}\n{rest}".strip(), [first]))
    return docs


# -- Debian Reference ----------------------------------------------------------------------------

SECTION = re.compile(r"^(?P<num>\d+(?:\.\d+)+)\.\s+(?P<title>\S.*)$")


def debref_docs(path: Path = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")) -> list[Doc]:
    lines = gzip.open(path, "rt", encoding="utf-8", errors="replace").read().split("\n")
    starts = [(n, m) for n, line in enumerate(lines) if (m := SECTION.match(line))]
    # the table of contents lists every heading once, indented; bodies start at column 0 headings
    docs = []
    for (n, m), nxt in zip(starts, [s for s, _ in starts[1:]] + [len(lines)]):
        body = "\n".join(lines[n + 1 : nxt]).strip()
        if len(body.split()) < MIN_DOC_WORDS:
            continue
        chapter = m["num"].split(".")[0]
        docs.append(Doc(f"debref:{m['num']}", f"ch{chapter}", body, [m["title"].strip()]))
    return docs


# -- writing -------------------------------------------------------------------------------------


def write_set(out: Path, name: str, docs: list[Doc], lang: str, test_fraction: float, seed: int) -> dict:
    """``out/<name>`` (or ``<name>-train`` and ``<name>-test``, split by unit with the seeded hash the
    man pages use); returns the sizes per directory written."""
    by_query: dict[str, tuple[str, set[str]]] = {}
    for d in docs:
        for q in d.queries:
            by_query.setdefault(beir.query_key(q), (q, set()))[1].add(d.id)
    unit = {d.id: d.unit for d in docs}
    splits = {name: lambda u: True}
    if test_fraction > 0:
        splits = {
            f"{name}-train": lambda u: not beir.held_out(u, test_fraction, seed),
            f"{name}-test": lambda u: beir.held_out(u, test_fraction, seed),
        }
    sizes = {}
    for split, keep in splits.items():
        kept_docs = sorted((d for d in docs if keep(d.unit)), key=lambda d: d.id)
        queries: list[dict] = []
        qrels: dict[str, dict[str, int]] = {}
        for key in sorted(by_query):
            text, ids = by_query[key]
            if len(ids) > MAX_RELEVANT or not all(keep(unit[i]) for i in ids):
                continue
            qid = f"{name}:q{len(queries)}"
            queries.append({"_id": qid, "text": text, "metadata": {"lang": lang}})
            qrels[qid] = {i: 1 for i in sorted(ids)}
        corpus = [{"_id": d.id, "title": "", "text": d.text, "metadata": {"lang": lang}} for d in kept_docs]
        beir.write(out / split, corpus, queries, qrels)
        sizes[split] = {
            "documents": len(corpus),
            "queries": len(queries),
            "units": len({d.unit for d in kept_docs}),
            "words": sum(len(d.text.split()) for d in kept_docs),
        }
    return sizes


@dataclass
class DocsOptions:
    sources: list[str]
    test_fraction: float = 0.0
    seed: int = 0
    debref_langs: list[str] = field(default_factory=lambda: ["en"])
    info_root: Path = Path("/usr/share/info")
    pydoc_root: Path = Path("/usr/share/doc/python3.11/html/library")
    debref_root: Path = Path("/usr/share/debian-reference")


def build(out: Path, opts: DocsOptions) -> dict:
    """Every requested source under ``out`` (``info``, ``pydoc``, ``debref`` and ``debref-<lang>``
    for other languages); returns (and writes) ``out/manifest.json``."""
    import json

    from rankserve.eval.manpages import installed_packages

    if not 0 <= opts.test_fraction < 1:
        raise ValueError(f"test_fraction {opts.test_fraction}: give a fraction in [0, 1)")
    bad = [s for s in opts.sources if s not in SOURCES]
    if bad or not opts.sources:
        raise ValueError(f"sources {bad or opts.sources}: choose from {', '.join(SOURCES)}")
    plans: list[tuple[str, str, Path, Callable[[Path], list[Doc]]]] = []
    if "info" in opts.sources:
        plans.append(("info", "en", opts.info_root, info_docs))
    if "pydoc" in opts.sources:
        plans.append(("pydoc", "en", opts.pydoc_root, pydoc_docs))
    if "debref" in opts.sources:
        for lang in opts.debref_langs:
            name = "debref" if lang == "en" else f"debref-{lang}"
            plans.append((name, lang, opts.debref_root / f"debian-reference.{lang}.txt.gz", debref_docs))
    variants = {}
    for name, lang, source, reader in plans:
        if not source.exists():
            package = {"info": "the manuals' packages", "pydoc": "python3.11-doc"}.get(name, f"debian-reference-{lang}")
            raise FileNotFoundError(f"{name}: {source} is missing (apt-get install {package})")
        docs = reader(source)
        variants.update(write_set(out, name, docs, lang, opts.test_fraction, opts.seed))
    manifest = {
        "variants": variants,
        "options": {k: ([str(x) for x in v] if isinstance(v, list) else str(v)) for k, v in vars(opts).items()},
        "packages": installed_packages(("python3.11-doc", "debian-reference-*", "info", "coreutils", "grep")),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
