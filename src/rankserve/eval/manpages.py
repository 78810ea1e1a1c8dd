"""A retrieval benchmark that works offline: the Linux manual installed from Debian packages.

    query    = the one-line description in the page's NAME section, without the command name
               ("ls - list directory contents" -> "list directory contents")
    document = the rest of the page rendered to plain text (groff, else mandoc), NAME removed
    qrels    = the query's own page

Variants, written as BEIR directories ``OUT/<granularity>/<variant>``:
    <lang>     monolingual: queries and documents in one language (``en``, ``de``, ``fr``, ...)
    <X>-en     cross-lingual: queries in X, English documents, pages joined on name and section
    pages/     one document per page (long documents: an embedder sees its first window only)
    passages/  pages cut into chunks of at most ``passage_tokens`` MiniLM WordPiece tokens at line
               boundaries; qrels name pages, and a page scores as its best passage (``metadata.page``)

Split (``test_fraction`` > 0): each variant is written as ``<variant>-train`` and ``<variant>-test``
instead, split by page: a page (and so its query and all its passages) is in the test split of every
variant or of none, chosen by a seeded hash of its id, so no test page or query is ever seen in
training, not even as a negative.

Deterministic: candidate pages are sorted, shuffled with ``seed`` and taken in that order until
``max_pages`` qualify; output rows are sorted. English pages are by default only those translated
into one of the other languages asked for (any installed language when only English is asked
for): the core manual (coreutils, util-linux, man-pages, ...) rather than whatever else a machine
has installed. Queries whose description is shared by
another page of the variant are dropped (their pages stay as documents).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rankserve.eval import beir

DASH = re.compile(r"\s+[-\u2010\u2012\u2013\u2014\u2212]+\s+")
PAGE_FILE = re.compile(r"^(?P<name>.+)\.(?P<section>\d\w*?)(?:\.gz)?$")


@dataclass
class BuildOptions:
    langs: list[str] = field(default_factory=lambda: ["en", "de", "fr"])
    cross: list[str] = field(default_factory=lambda: ["de", "fr"])
    sections: list[str] = field(default_factory=lambda: [str(n) for n in range(1, 9)])
    max_pages: int = 1000  # per variant; 0 = all
    granularity: list[str] = field(default_factory=lambda: ["pages", "passages"])
    passage_tokens: int = 250
    seed: int = 0
    man_root: Path = Path("/usr/share/man")
    english: str = "translated"  # translated | all
    workers: int = 2
    progress: bool = True
    test_fraction: float = 0.0  # > 0: write <variant>-train and <variant>-test, split by page


@dataclass(frozen=True)
class Page:
    id: str  # name.section, e.g. "ls.1"
    description: str
    text: str


# -- finding and rendering pages --------------------------------------------------------------


def lang_dir(root: Path, lang: str) -> Path:
    return root if lang == "en" else root / lang


def list_pages(root: Path, lang: str, sections: list[str]) -> dict[str, Path]:
    """Page id -> file for one language: regular files only (symlinks and ``.so`` stubs are aliases)."""
    pages = {}
    for sec in sections:
        folder = lang_dir(root, lang) / f"man{sec}"
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = PAGE_FILE.match(path.name)
            if m and path.is_file() and not path.is_symlink():
                pages[f"{m['name']}.{m['section']}"] = path
    return pages


def translated_ids(root: Path, sections: list[str]) -> set[str]:
    """Ids of pages present in any non-English tree under ``root``."""
    ids: set[str] = set()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("man"):
            ids.update(list_pages(root, folder.name, sections))
    return ids


def renderer() -> list[str]:
    if shutil.which("groff"):
        # -k: preconv (input encoding); no hyphenation, 200-column lines, no bold/underline.
        return ["groff", "-k", "-mandoc", "-Tutf8", "-P-cbou", "-rHY=0", "-rLL=200n", "-rcR=1"]
    if shutil.which("mandoc"):
        return ["mandoc", "-Tutf8", "-Owidth=200"]
    raise RuntimeError("no man page renderer: install groff-base (or mandoc), e.g. apt-get install groff-base")


def read_source(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def render(path: Path, command: list[str]) -> str | None:
    """Plain text of one page; None for alias stubs (``.so``) and pages that fail to render."""
    source = read_source(path)
    if source.lstrip().startswith(b".so "):
        return None
    proc = subprocess.run(command, input=source, capture_output=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout:
        return None
    return re.sub(r".\x08", "", proc.stdout.decode("utf-8", errors="replace"))


def parse(page_id: str, rendered: str) -> Page | None:
    """Split rendered text into the NAME description and the rest; None when NAME has no description."""
    lines = [ln.rstrip() for ln in rendered.splitlines()]
    nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(nonblank) < 3:
        return None
    lines = lines[nonblank[0] + 1 : nonblank[-1]]  # drop the header and footer lines
    sections: list[tuple[str, list[str]]] = []
    for ln in lines:
        if ln and not ln[0].isspace():
            sections.append((ln.strip(), []))
        elif sections:
            sections[-1][1].append(ln)
    if len(sections) < 2:
        return None
    name_text = " ".join(" ".join(sections[0][1]).split())
    parts = DASH.split(name_text, maxsplit=1)
    if len(parts) != 2 or not parts[1].strip():
        return None
    description = parts[1].strip()
    body = []
    for heading, content in sections[1:]:
        body.append(heading)
        body.extend(" ".join(ln.split()) for ln in content)
        body.append("")
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip()
    if len(text.split()) < 5:
        return None
    return Page(page_id, description, text)


class Renderer:
    """Renders pages on demand with a thread pool; remembers results (a page is rendered once)."""

    def __init__(self, workers: int, progress: bool):
        self.command = renderer()
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.done: dict[Path, Page | None] = {}
        self.bar = tqdm(desc="render man pages", unit="page", disable=not progress)

    def pages(self, items: list[tuple[str, Path]]) -> list[Page | None]:
        todo = sorted({p: i for i, p in items if p not in self.done}.items())

        def one(item: tuple[Path, str]) -> tuple[Path, Page | None]:
            path, page_id = item
            text = render(path, self.command)
            return path, (parse(page_id, text) if text else None)

        for path, page in self.pool.map(one, todo):
            self.done[path] = page
            self.bar.update(1)
        return [self.done[p] for _, p in items]

    def close(self) -> None:
        self.bar.close()
        self.pool.shutdown()


# -- sampling ----------------------------------------------------------------------------------


def sample(
    candidates: list[str], sources: list[dict[str, Path]], render: Renderer, n: int, seed: int
) -> list[list[Page]]:
    """Take candidate ids in seeded order until ``n`` render and parse in every source; returns, per
    source, the chosen pages sorted by id. (So a smaller ``n`` picks a subset of a larger one's pages.)"""
    block = min(64, max(8, 2 * n)) if n else 64  # pages rendered per step; does not change the choice
    order = sorted(candidates)
    random.Random(seed).shuffle(order)
    chosen: list[list[Page]] = []
    for start in range(0, len(order), block):
        ids = order[start : start + block]
        per_source = [render.pages([(i, src[i]) for i in ids]) for src in sources]
        for row in zip(*per_source):
            if all(row) and (not n or len(chosen) < n):
                chosen.append(list(row))
        if n and len(chosen) >= n:
            break
    chosen.sort(key=lambda row: row[0].id)
    return [[row[s] for row in chosen] for s in range(len(sources))]


# -- writing -----------------------------------------------------------------------------------


class Chunker:
    """Packs a page's lines into passages of at most ``limit`` WordPiece tokens (the default model's)."""

    def __init__(self, limit: int):
        from tokenizers import Tokenizer

        from rankserve.models.model_dir import default_model_dir

        self.tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
        self.tok.no_truncation()
        self.tok.no_padding()
        self.limit = limit

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False)] if texts else []

    def split(self, text: str) -> list[str]:
        pieces: list[tuple[str, int]] = []  # lines, over-long lines cut between words
        lines = text.split("\n")
        for line, n in zip(lines, self.count(lines)):
            if n <= self.limit:
                pieces.append((line, n))
                continue
            words, size = [], 0
            for word, c in zip(line.split(), self.count(line.split())):
                if words and size + c > self.limit:
                    pieces.append((" ".join(words), size))
                    words, size = [], 0
                words.append(word)
                size += c
            pieces.append((" ".join(words), size))
        chunks, current, size = [], [], 0
        for line, n in pieces:
            if current and size + n > self.limit:
                chunks.append("\n".join(current).strip())
                current, size = [], 0
            current.append(line)
            size += n
        chunks.append("\n".join(current).strip())
        return [c for c in chunks if c]


def write_variant(
    out: Path, queries: list[Page], q_lang: str, docs: list[Page], d_lang: str, chunker: Chunker | None
) -> dict[str, int]:
    """One BEIR directory; queries with a description shared by another page are dropped."""
    counts: dict[str, int] = {}
    for p in queries:
        key = beir.query_key(p.description)
        counts[key] = counts.get(key, 0) + 1
    kept = [p for p in queries if counts[beir.query_key(p.description)] == 1]
    query_rows = [{"_id": f"{q_lang}:{p.id}", "text": p.description, "metadata": {"lang": q_lang}} for p in kept]
    qrels = {f"{q_lang}:{p.id}": {p.id: 1} for p in kept}
    corpus = []
    for p in docs:
        if chunker is None:
            corpus.append({"_id": p.id, "title": "", "text": p.text, "metadata": {"lang": d_lang}})
        else:
            for n, chunk in enumerate(chunker.split(p.text)):
                corpus.append(
                    {"_id": f"{p.id}#{n}", "title": "", "text": chunk, "metadata": {"lang": d_lang, "page": p.id}}
                )
    beir.write(out, corpus, query_rows, qrels)
    return {
        "documents": len(corpus),
        "pages": len(docs),
        "queries": len(kept),
        "words": sum(len(row["text"].split()) for row in corpus),
    }


def installed_packages(patterns: tuple[str, ...] = ("manpages*", "groff-base", "mandoc")) -> dict[str, str]:
    """Versions of the installed packages the data comes from (its provenance): by default the
    man-page and renderer packages."""
    if not shutil.which("dpkg-query"):
        return {}
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n", *patterns],
        capture_output=True,
        text=True,
    )
    rows = [ln.split("\t") for ln in proc.stdout.splitlines()]
    return {r[0]: r[1] for r in rows if len(r) == 3 and r[2].startswith("ii")}


def build(out: Path, opts: BuildOptions) -> dict:
    """Write every variant under ``out``; returns (and writes) ``out/manifest.json``."""
    if not 0 <= opts.test_fraction < 1:
        raise ValueError(f"test_fraction {opts.test_fraction}: give a fraction in [0, 1)")
    bad = [g for g in opts.granularity if g not in ("pages", "passages")]
    if bad or not opts.granularity:
        raise ValueError(f"granularity {bad or opts.granularity}: choose pages, passages or both")
    needed = sorted(set(opts.langs) | set(opts.cross) | ({"en"} if opts.cross else set()))
    for lang in needed:
        if not lang_dir(opts.man_root, lang).is_dir():
            raise FileNotFoundError(
                f"no man pages for {lang!r} under {opts.man_root} (apt-get install manpages-{lang})"
            )
    trees = {lang: list_pages(opts.man_root, lang, opts.sections) for lang in needed}
    if opts.english == "translated" and "en" in trees:
        others = [lang for lang in needed if lang != "en"]
        translated = (
            set().union(*(trees[lang] for lang in others)) if others else translated_ids(opts.man_root, opts.sections)
        )
        trees["en"] = {i: p for i, p in trees["en"].items() if i in translated}
    chunker = Chunker(opts.passage_tokens) if "passages" in opts.granularity else None
    rend = Renderer(opts.workers, opts.progress)
    variants: dict[str, dict[str, int]] = {}
    try:
        plans = [(lang, lang, lang) for lang in opts.langs] + [(f"{x}-en", x, "en") for x in opts.cross if x != "en"]
        for name, q_lang, d_lang in plans:
            sources = [trees[q_lang]] if q_lang == d_lang else [trees[q_lang], trees[d_lang]]
            candidates = sorted(set.intersection(*(set(s) for s in sources)))
            picked = sample(candidates, sources, rend, opts.max_pages, opts.seed)
            queries, docs = picked[0], picked[-1]
            splits = {name: (queries, docs)}
            if opts.test_fraction > 0:

                def part(pages: list[Page], test: bool) -> list[Page]:
                    return [p for p in pages if beir.held_out(p.id, opts.test_fraction, opts.seed) == test]

                splits = {
                    f"{name}-{label}": (part(queries, test), part(docs, test))
                    for label, test in (("train", False), ("test", True))
                }
            for gran in opts.granularity:
                for split_name, (qs, ds) in splits.items():
                    variants[f"{gran}/{split_name}"] = write_variant(
                        out / gran / split_name, qs, q_lang, ds, d_lang, chunker if gran == "passages" else None
                    )
    finally:
        rend.close()
    manifest = {
        "variants": variants,
        "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items() if k not in ("workers", "progress")
        },
        "renderer": rend.command[0],
        "packages": installed_packages(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
