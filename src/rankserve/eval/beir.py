"""BEIR-format datasets: read and write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv``.

Two optional extensions, both ignored by other BEIR tools:
- a corpus line's ``metadata.page`` names the unit qrels refer to; several documents (passages) may
  share one page, and a page is scored by its best passage (MaxP) before metrics are computed;
- ``metadata.lang`` on queries and documents picks the BM25 tokenizer and gives per-language rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Dataset:
    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    doc_page: dict[str, str] = field(default_factory=dict)  # passage id -> page id; empty = documents are pages
    doc_lang: dict[str, str] = field(default_factory=dict)
    query_lang: dict[str, str] = field(default_factory=dict)

    @property
    def has_passages(self) -> bool:
        return any(self.doc_page.get(d, d) != d for d in self.doc_ids)

    def fingerprint(self, part: str) -> str:
        """sha256 over ids and texts of the corpus or the queries: the embedding cache key's data half."""
        ids, texts = (self.doc_ids, self.doc_texts) if part == "corpus" else (self.query_ids, self.query_texts)
        h = hashlib.sha256()
        for i, t in zip(ids, texts):
            h.update(i.encode() + b"\0" + t.encode() + b"\0")
        return h.hexdigest()

    def split_pages(self, fraction: float, seed: int | str) -> tuple[Dataset, Dataset, int]:
        """(rest, held out, dropped queries): pages held out by ``held_out``; each part keeps its own
        pages' documents and the queries whose relevant pages all lie in it. A query with relevant
        pages on both sides is in neither (counted), so no held-out page is ever seen by the rest."""
        pages = {d: self.doc_page.get(d, d) for d in self.doc_ids}
        out = {p for p in set(pages.values()) if held_out(p, fraction, seed)}
        parts = []
        placed: set[str] = set()
        for side, suffix in ((False, ""), (True, "-heldout")):
            queries = [
                q
                for q in self.query_ids
                if (rel := [p for p, g in self.qrels.get(q, {}).items() if g > 0])
                and all((p in out) == side for p in rel)
            ]
            placed.update(queries)
            docs = [n for n, d in enumerate(self.doc_ids) if (pages[d] in out) == side]
            sub = self.subset(queries)
            parts.append(
                Dataset(
                    self.name + suffix,
                    [self.doc_ids[n] for n in docs],
                    [self.doc_texts[n] for n in docs],
                    sub.query_ids,
                    sub.query_texts,
                    sub.qrels,
                    self.doc_page,
                    self.doc_lang,
                    sub.query_lang,
                )
            )
        return parts[0], parts[1], len(self.query_ids) - len(placed)

    def sample(self, n: int | None, seed: int) -> Dataset:
        """A seeded sample of ``n`` queries (sorted ids first, so the sample depends only on the ids
        and the seed), with the whole corpus; the dataset itself when ``n`` is 0/None or covers all."""
        if not n or n >= len(self.query_ids):
            return self
        return self.subset(random.Random(seed).sample(sorted(self.query_ids), n))

    def subset(self, query_ids: Iterable[str]) -> Dataset:
        keep = set(query_ids)
        pairs = [(q, t) for q, t in zip(self.query_ids, self.query_texts) if q in keep]
        return Dataset(
            self.name,
            self.doc_ids,
            self.doc_texts,
            [q for q, _ in pairs],
            [t for _, t in pairs],
            {q: r for q, r in self.qrels.items() if q in keep},
            self.doc_page,
            self.doc_lang,
            {q: lang for q, lang in self.query_lang.items() if q in keep},
        )


def query_key(text: str) -> str:
    """The form under which two query texts count as the same (case and spacing ignored): builders
    drop, or pool, queries that share it."""
    return " ".join(text.lower().split())


def check_id(value: str) -> str:
    """``value``, refused (ValueError) when it holds whitespace: a TREC run line is
    ``qid Q0 docid rank score tag``, so such an id would split into two fields."""
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"id {value!r}: ids must be non-empty and hold no whitespace (TREC run files)")
    return value


def held_out(unit_id: str, fraction: float, seed: int | str) -> bool:
    """Whether a page (or document) is held out: a seeded hash of its id, so the same pages are held
    out in every variant and language, whichever other pages were sampled. The test split uses the
    data seed; other splits (validation) use a different ``seed`` so they are independent of it."""
    digest = hashlib.sha256(f"{seed}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _jsonl(path: Path) -> Iterable[dict]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None


def is_beir_dir(path: Path) -> bool:
    return (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file()


def find_datasets(path: Path) -> list[Path]:
    """``path`` itself if it is a BEIR directory, else its BEIR subdirectories (sorted)."""
    if is_beir_dir(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and is_beir_dir(p)) if path.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{path}: no corpus.jsonl + queries.jsonl here or in its subdirectories")
    return found


def load(path: Path, split: str = "test") -> Dataset:
    qrels_file = path / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise FileNotFoundError(f"{qrels_file} is missing (BEIR layout: qrels/{split}.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_file.open(encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        for row in rows:
            if not row or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    doc_ids, doc_texts, doc_page, doc_lang = [], [], {}, {}
    for d in _jsonl(path / "corpus.jsonl"):
        did = str(d["_id"])
        doc_ids.append(did)
        title, text = d.get("title") or "", d.get("text") or ""
        doc_texts.append(f"{title}\n{text}".strip() if title else text)
        meta = d.get("metadata") or {}
        if "page" in meta:
            doc_page[did] = str(meta["page"])
        if "lang" in meta:
            doc_lang[did] = meta["lang"]
    query_ids, query_texts, query_lang = [], [], {}
    for q in _jsonl(path / "queries.jsonl"):
        qid = str(q["_id"])
        if qid not in qrels:  # BEIR ships all splits' queries in one file; keep the split's
            continue
        query_ids.append(qid)
        query_texts.append(q["text"])
        meta = q.get("metadata") or {}
        if "lang" in meta:
            query_lang[qid] = meta["lang"]
    return Dataset(path.name, doc_ids, doc_texts, query_ids, query_texts, qrels, doc_page, doc_lang, query_lang)


def write(
    path: Path,
    corpus: Iterable[Mapping],
    queries: Iterable[Mapping],
    qrels: Mapping[str, Mapping[str, int]],
    split: str = "test",
) -> None:
    """Write a BEIR directory; rows are written in the order given (callers sort them). Ids may not
    hold whitespace: run files (TREC format) separate their fields with it."""
    (path / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        with (path / name).open("w", encoding="utf-8") as f:
            for row in rows:
                check_id(str(row["_id"]))
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (path / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in qrels:
            for d, rel in qrels[q].items():
                f.write(f"{q}\t{d}\t{rel}\n")
