"""Strings -> token ids, with the truncation policy. Runs in a thread pool, never on the event loop.

One truncation mechanism serves every input shape: each token gets a role (kept, query, passage,
text) and truncation removes tokens of a role from one side until the sequence fits. Special
tokens and template text are never removed.

- rerank pairs, ``END``: passage tokens from the right first, then query tokens from the right;
- single texts (embeddings): ``END`` keeps the start, ``START`` keeps the end;
- ``NONE``: an over-long input raises ``InputTooLong`` naming the input, its length and the limit;
- ``CHUNK`` (ranking only; ``pair_windows`` / ``text_windows``): an over-long passage becomes
  overlapping windows of the model's length, each with the query (and template) intact; the engine
  scores every window and gives the passage the best (or mean) score.

Long texts cost what the model reads (``bound``): before tokenizing, each text is cut, at
whitespace, to a prefix (a suffix for ``START``) that still holds ``BOUND_MARGIN`` tokens more
than truncation can keep, so a 100,000-character passage is tokenized as a few thousand
characters, and the kept tokens are the ones the whole text would give. ``NONE`` tokenizes the
whole text (in Rust, no per-token Python) to say its exact length when it refuses it.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tokenizers import Encoding, Tokenizer

from rankserve.errors import InputTooLong

if TYPE_CHECKING:
    import torch

Truncate = Literal["NONE", "START", "END", "CHUNK"]
CHUNK_OVERLAP = 0.25  # of a window: text cut at a window edge appears whole in the next one
# A bounded text holds this many tokens past the most truncation keeps: the tokens near the cut,
# which may differ from the whole text's, are always among those truncation removes.
BOUND_MARGIN = 32
CHARS_PER_TOKEN = 6  # the first guess of a bound's length; it grows 4x until the bound holds enough
WHITESPACE = (" ", "\n", "\t", "\r")
EDGE_CHARS = 64  # the most of a text's far end a bound keeps (its last or first word)
KEEP, QUERY, PASSAGE, TEXT = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Encoded:
    ids: list[int]
    type_ids: list[int] | None  # None when the model has no token types (Llama)
    pixels: torch.Tensor | None = field(default=None, compare=False)  # an image passage's tiles [T, 3, S, S] (VL)

    def __len__(self) -> int:
        return len(self.ids)


def template_spans(template: str, **values: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """Fill ``template`` and return the character span of each field in the result."""
    text, spans = "", {}
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        text += literal
        if name is not None:
            spans[name] = (len(text), len(text) + len(values[name]))
            text += values[name]
    return text, spans


def _roles_from_offsets(enc: Encoding, spans: dict[int, tuple[int, int]]) -> list[int]:
    """Each token's role: the field holding its last character. A token that begins in template
    text and ends in a field (Metaspace's or byte-level BPE's "▁word"/"Ġword", whose space is the
    template's) is that field's, so truncation can drop it like the rest of the field."""
    roles = []
    for (start, end), special in zip(enc.offsets, enc.special_tokens_mask):
        role = KEEP
        if not special and end > start:
            role = next((r for r, (a, b) in spans.items() if a <= end - 1 < b), KEEP)
        roles.append(role)
    return roles


def _cut(enc: Encoding, roles: list[int], limit: int, order: Sequence[tuple[int, str]]) -> list[int] | None:
    """Indices of tokens to keep after removing the excess in ``order``; None if it cannot fit."""
    excess = len(roles) - limit
    drop: set[int] = set()
    for role, side in order:
        where = [i for i, r in enumerate(roles) if r == role]
        if side == "right":
            where.reverse()
        drop.update(where[: excess - len(drop)])
        if len(drop) >= excess:
            return [i for i in range(len(roles)) if i not in drop]
    return None


def cut_at_whitespace(text: str, chars: int, keep_end: bool) -> str:
    """``text``'s first (``keep_end``: last) ~``chars`` characters, cut at the whitespace nearest the
    bound within its last quarter (so no word is split), else exactly at the bound; plus the text's
    other end: its last (``keep_end``: first) word, up to ``EDGE_CHARS``.

    Why the other end: the tokens where the text meets the template or prefix around it decide
    which tokens are the text's (``_roles_from_offsets``); keeping both ends keeps those junctions
    exactly as in the whole text. The cut's own junction is among the ``BOUND_MARGIN`` tokens that
    truncation removes."""
    if keep_end:
        low = len(text) - chars
        found = [i for i in (text.find(w, low, low + chars // 4) for w in WHITESPACE) if i >= 0]
        edge = [i for i in (text.find(w, 0, EDGE_CHARS) for w in WHITESPACE) if i > 0]
        head = min(edge) if edge else EDGE_CHARS
        start = min(found) if found else low
        return text[:head] + text[start:] if start > head else text
    found = [text.rfind(w, chars - chars // 4, chars) for w in WHITESPACE]
    cut = max(found)
    cut = cut if cut > 0 else chars
    tail = max([text.rfind(w, len(text) - EDGE_CHARS) for w in WHITESPACE])
    tail = tail if tail >= len(text) - EDGE_CHARS else len(text) - EDGE_CHARS
    return text[:cut] + text[tail:] if tail > cut else text


class TokenizerPolicy:
    """The model's fast tokenizer plus how this model wants its inputs built and truncated."""

    def __init__(self, tokenizer_file: str, *, max_length: int, rerank_template: str | None, with_type_ids: bool):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = max_length
        self.rerank_template = rerank_template
        self.with_type_ids = with_type_ids

    def bound(self, texts: Sequence[str], tokens: int, keep_end: bool = False) -> tuple[list[str], list[bool]]:
        """Each text, or (when it is longer) its shortest tested prefix (``keep_end``: suffix) cut at
        whitespace that holds at least ``tokens + BOUND_MARGIN`` tokens; -> (texts, which were cut).

        Why: tokenizing a whole 100,000-character passage, and walking its tokens to truncate
        them, cost seconds for a model that reads 512 tokens. The guess starts at
        ``CHARS_PER_TOKEN`` characters a token and grows 4x where it held too few (a text of long
        words, or whitespace runs); every guess is checked by tokenizing it. ``tokens <= 0``: no bound.
        """
        out, cut = list(texts), [False] * len(texts)
        if tokens <= 0:
            return out, cut
        need = tokens + BOUND_MARGIN
        chars = need * CHARS_PER_TOKEN
        todo = [i for i, t in enumerate(out) if len(t) > chars]
        while todo:
            parts = [cut_at_whitespace(texts[i], chars, keep_end) for i in todo]
            counts = [len(e.ids) for e in self.tokenizer.encode_batch(parts, add_special_tokens=False)]
            for i, part, count in zip(todo, parts, counts):
                if count >= need:
                    out[i], cut[i] = part, True
            chars *= 4
            todo = [i for i, count in zip(todo, counts) if count < need and len(texts[i]) > chars]
        return out, cut

    def _finish(self, enc: Encoding, keep: list[int] | None = None) -> Encoded:
        ids = enc.ids if keep is None else [enc.ids[i] for i in keep]
        types = None
        if self.with_type_ids:
            types = enc.type_ids if keep is None else [enc.type_ids[i] for i in keep]
        return Encoded(ids, types)

    def _fit(
        self,
        encs: Sequence[Encoding],
        truncate: Truncate,
        what: str,
        roles_of,
        order,
        names: Sequence[int] | None = None,
    ) -> list[Encoded]:
        """Pass short inputs through; cut long ones by ``order`` (or refuse them under NONE).

        Errors name input ``names[i]`` (its index in the request) when given, else ``i``.
        """
        out = []
        for i, enc in enumerate(encs):
            n = i if names is None else names[i]
            if len(enc.ids) <= self.max_length:
                out.append(self._finish(enc))
                continue
            if truncate == "NONE":
                raise InputTooLong(
                    f"{what}[{n}]: input length {len(enc.ids)} tokens exceeds the maximum allowed "
                    f"{self.max_length} tokens (truncate is NONE)",
                    param=f"{what}.{n}",
                )
            keep = _cut(enc, roles_of(i, enc), self.max_length, order)
            if keep is None:
                raise InputTooLong(f"{what}[{n}]: the template or prefix alone exceeds {self.max_length} tokens")
            out.append(self._finish(enc, keep))
        return out

    def _windows(
        self,
        encs: Sequence[Encoding],
        roles_of,
        role: int,
        what: str,
        names: Sequence[int] | None = None,
        limit: int = 0,
    ) -> tuple[list[Encoded], list[int]]:
        """Each encoding as is when it fits, else one window per stretch of its ``role`` tokens (the
        other tokens, e.g. specials and the query, in every window), the first ``limit`` of them
        (0 = all); -> (windows, owner of each)."""
        out, owners = [], []
        for i, enc in enumerate(encs):
            if len(enc.ids) <= self.max_length:
                out.append(self._finish(enc))
                owners.append(i)
                continue
            roles = roles_of(i, enc)
            body = [j for j, r in enumerate(roles) if r == role]
            fixed = [j for j, r in enumerate(roles) if r != role]
            room = self.max_length - len(fixed)
            if room < 1:
                n = i if names is None else names[i]
                raise InputTooLong(
                    f"{what}[{n}]: the query, template or prefix alone fill the {self.max_length}-token "
                    "limit; no room for a window of the passage",
                    param=f"{what}.{n}",
                )
            step = max(1, room - int(room * CHUNK_OVERLAP))
            start, count = 0, 0
            while True:
                window = body[start : start + room]
                out.append(self._finish(enc, sorted(fixed + window)))
                owners.append(i)
                count += 1
                if start + room >= len(body) or count == limit:
                    break
                start += step
        return out, owners

    def pair_windows(self, query: str, passages: Sequence[str], limit: int = 0) -> tuple[list[Encoded], list[int]]:
        """Cross-encoder inputs under ``CHUNK``: -> (windows, the passage index of each window);
        at most ``limit`` windows per passage (its first ones), 0 = all."""
        (query,), _ = self.bound([query], self.max_length)
        passages, _ = self.bound(passages, limit * self.max_length)  # the first ``limit`` windows' tokens
        encs, roles_of = self._pair_encodings(query, passages)
        return self._windows(encs, roles_of, PASSAGE, "passages", limit=limit)

    def text_windows(
        self,
        texts: Sequence[str],
        prefix: str = "",
        what: str = "passages",
        names: Sequence[int] | None = None,
        limit: int = 0,
    ) -> tuple[list[Encoded], list[int]]:
        """Single-sequence inputs under ``CHUNK`` (bi-encoder ranking): -> (windows, owner of each)."""
        texts, _ = self.bound(texts, limit * self.max_length)
        encs, roles_of = self._text_encodings(texts, prefix)
        return self._windows(encs, roles_of, TEXT, what, names, limit)

    def _pair_encodings(self, query: str, passages: Sequence[str], templates: Sequence[str] | None = None):
        """``templates``: one per passage in place of ``rerank_template`` (a VL model's image prefix)."""
        if self.rerank_template is None:
            encs = self.tokenizer.encode_batch([(query, p) for p in passages])

            def roles_of(i: int, enc: Encoding) -> list[int]:  # noqa: ARG001 (i: the other variant's)
                return [KEEP if s is None else (QUERY if s == 0 else PASSAGE) for s in enc.sequence_ids]
        else:
            filled = [
                template_spans(templates[i] if templates else self.rerank_template, query=query, passage=p)
                for i, p in enumerate(passages)
            ]
            encs = self.tokenizer.encode_batch([text for text, _ in filled])

            def roles_of(i: int, enc: Encoding) -> list[int]:
                spans = filled[i][1]
                return _roles_from_offsets(enc, {QUERY: spans["query"], PASSAGE: spans["passage"]})

        return encs, roles_of

    def _text_encodings(self, texts: Sequence[str], prefix: str):
        encs = self.tokenizer.encode_batch([prefix + t for t in texts])

        def roles_of(i: int, enc: Encoding) -> list[int]:
            return _roles_from_offsets(enc, {TEXT: (len(prefix), len(prefix) + len(texts[i]))})

        return encs, roles_of

    def pairs(
        self, query: str, passages: Sequence[str], truncate: Truncate, templates: Sequence[str] | None = None
    ) -> list[Encoded]:
        """Cross-encoder inputs for (query, passage_i), truncated passage-first; ``templates`` as in
        ``_pair_encodings`` (text outside the fields, image tokens included, is never cut)."""
        keep = 0 if truncate == "NONE" else self.max_length  # NONE: the exact length, for its error
        (query,), _ = self.bound([query], keep)
        passages, _ = self.bound(passages, keep)
        encs, roles_of = self._pair_encodings(query, passages, templates)
        return self._fit(encs, truncate, "passages", roles_of, [(PASSAGE, "right"), (QUERY, "right")])

    def texts(
        self,
        texts: Sequence[str],
        truncate: Truncate,
        prefix: str = "",
        what: str = "input",
        names: Sequence[int] | None = None,
    ) -> list[Encoded]:
        """Single-sequence inputs (embeddings, bi-encoder ranking), optionally prefixed."""
        texts, _ = self.bound(texts, 0 if truncate == "NONE" else self.max_length, keep_end=truncate == "START")
        encs, roles_of = self._text_encodings(texts, prefix)
        side = "left" if truncate == "START" else "right"
        return self._fit(encs, truncate, what, roles_of, [(TEXT, side)], names)
