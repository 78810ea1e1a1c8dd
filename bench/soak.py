"""Soak, overload and SIGTERM-drain test of a live rankserve server: reliability, not speed.

Each phase starts ``python -m rankserve.cli serve`` as a child process on 127.0.0.1 (the packaged
default model, or ``--model DIR``) and talks to it over HTTP with asyncio + httpx. Expected answers
come from rankserve's own ``Engine`` loaded in this process (same model, same settings, no HTTP):
the independent reference every 200 is compared with (scores / vectors within ``--tolerance``,
token counts exact).

- soak: C clients for T seconds send a mix of valid requests (``/v1/ranking``, NVIDIA's hosted
  route, Cohere ``/v1/rerank`` and ``/v2/rerank``, TEI ``/rerank``, ``/v1/embeddings``; 1-20
  passages/inputs of English-like text) and ~20 % invalid ones (empty or blank query, lone UTF-16
  surrogates, wrong types, NaN/Infinity, unknown model, broken JSON, empty lists). Every valid
  request must get a correct 200, every invalid one a 4xx with an ``error`` object; nothing may be
  lost or get a 5xx. Server RSS (VmRSS) is sampled before, during and after.
- overload: a server with a small ``--max-queue-requests`` gets many more heavy requests at once.
  Requests beyond capacity must get 503 + Retry-After (type ``overloaded``) quickly, every
  admitted one a correct 200, and afterwards the queue must be empty and the server serving.
- sigterm: SIGTERM while a batch of heavy requests is in flight. Every admitted request must be
  answered 200 and correctly; requests sent during the drain get 503 ``shutting_down`` or a
  refused connection; ``/v1/health/ready`` answers 503 ``draining``; the process exits with the
  signal re-raised (-15 / 143) or 0 within the drain timeout.

    python bench/soak.py [--phases soak,overload,sigterm] [--clients 64] [--seconds 60] [--out soak.json]
                         [--model DIR] [--serve-args '--cpu-gemm torch'] [--max-rss-growth-mb 50]

Prints a table per phase; exits 1 if any check failed (each failure is listed with an example).
Server RSS is reported (before, halfway, after, and its drift in the second half), and checked
only with ``--max-rss-growth-mb``. This soak found RSS growing without bound with oneDNN linear
layers (a kernel and allocations per input shape); oneDNN's rows are now bucketed and the model
thread trims freed memory periodically, and a 180 s soak levels off (docs/reliability.md).
``--serve-args '--cpu-gemm torch'`` compares the other GEMM. Server logs (info level) are kept in
``--log-dir``; each phase reports the server's CPU GEMM choice.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port  # noqa: E402

from rankserve.loadgen import percentile  # noqa: E402

# -- text -------------------------------------------------------------------------------------------

SENTENCES = (
    "The ls command lists the files and folders in a directory.",
    "Use chmod to change the permissions of a file, for example chmod 644 notes.txt.",
    "A process that ignores SIGTERM can still be stopped with SIGKILL.",
    "The grep tool searches text for lines that match a regular expression.",
    "Tar archives can be compressed with gzip, bzip2 or xz.",
    "Cron runs scheduled jobs at fixed times, dates or intervals.",
    "The kernel keeps a page cache of recently read files in memory.",
    "An SSH key pair lets you log in to a server without typing a password.",
    "Bananas are a good source of potassium and vitamin B6.",
    "Bread dough needs time to rise before it goes into a hot oven.",
    "A risotto is made by adding warm stock to rice a ladle at a time.",
    "Fresh basil loses its flavour quickly when it is cooked for too long.",
    "Olive oil, garlic and chili make a simple sauce for spaghetti.",
    "Paris is the capital of France and sits on the river Seine.",
    "The Danube flows through ten countries before it reaches the Black Sea.",
    "Mount Everest is the highest mountain above sea level.",
    "The Sahara is the largest hot desert in the world.",
    "Tokyo (東京) is one of the most populous metropolitan areas on Earth.",
    "The Roman Empire split into an eastern and a western half in the fourth century.",
    "The printing press spread quickly across Europe after 1450.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Mitochondria produce most of the chemical energy a cell needs.",
    "DNA is copied before a cell divides, so each daughter cell gets a full set.",
    "Vaccines train the immune system to recognise a pathogen.",
    "Honey bees communicate the direction of flowers with a waggle dance.",
    "Octopuses can change the colour and texture of their skin in a fraction of a second.",
    "Jupiter is the largest planet in the solar system.",
    "A light year is the distance light travels in one year, about 9.46 trillion kilometres.",
    "The Moon always shows the same face to the Earth.",
    "Black holes bend light so strongly that nothing escapes from inside the event horizon.",
    "A marathon is 42.195 kilometres long.",
    "In tennis, a score of forty all is called deuce.",
    "The offside rule in football stops attackers from waiting behind the defence.",
    "Chess openings such as the Sicilian Defence have been studied for centuries.",
    "Compound interest means that interest is earned on earlier interest.",
    "An index fund tries to match the return of a market index at low cost.",
    "Inflation reduces the purchasing power of money over time.",
    "A balance sheet lists what a company owns and what it owes.",
    "Python lists can hold items of different types.",
    "A hash table finds a value by its key in constant time on average.",
    "Binary search halves the remaining range at every step.",
    "Garbage collection frees memory that a program can no longer reach.",
    "A deadlock happens when two threads each wait for a lock the other holds.",
    "HTTP status 503 means the service is unavailable and the client may retry later.",
    "The Retry-After header tells a client how many seconds to wait.",
    "Transformers use attention to weigh every token against every other token.",
    "A cross-encoder reads the query and the passage together and outputs one score.",
    "A bi-encoder embeds queries and passages separately and compares the vectors.",
    "Cosine similarity measures the angle between two vectors.",
    "Rain is more likely when warm, moist air rises and cools.",
    "The café on the corner serves a naïve but charming crème brûlée.",
    "Zürich and Genève are the largest cities of Switzerland.",
    "Gardeners plant tomatoes after the last frost of spring.",
    "Regular exercise improves sleep, mood and heart health.",
    "Drinking enough water matters more in hot weather.",
    "The violin has four strings tuned in fifths.",
    "Jazz grew out of blues and ragtime in New Orleans.",
    "Shakespeare wrote comedies, tragedies and histories.",
    "A haiku has three lines of five, seven and five syllables.",
    "Electric cars convert most of their battery energy into motion.",
    "Solar panels produce less power on cloudy days.",
    "Wind turbines turn slowly but their blade tips move very fast.",
    "Glaciers carve U-shaped valleys as they move downhill.",
    "Earthquakes are measured with seismometers 🙂 and reported on the moment magnitude scale.",
    "The library opens at nine and closes at six on weekdays.",
    "Please return borrowed books within three weeks.",
    "The train to the airport leaves every fifteen minutes.",
    "A passport must usually be valid for six months after arrival.",
    "Cats sleep for twelve to sixteen hours a day.",
)

QUERIES = (
    "How do I list the files in a directory?",
    "how to change file permissions",
    "What stops a process that ignores signals?",
    "search text with a regular expression",
    "How do I compress an archive?",
    "schedule a job to run every night",
    "Which fruit is rich in potassium?",
    "how to make risotto",
    "What is the capital of France?",
    "Which river flows into the Black Sea?",
    "highest mountain in the world",
    "When did the French Revolution start?",
    "How do plants make sugar?",
    "what do mitochondria do",
    "How do bees tell each other where flowers are?",
    "largest planet",
    "How far is a light year?",
    "How long is a marathon?",
    "what is deuce in tennis",
    "How does compound interest work?",
    "What is an index fund?",
    "How fast is a hash table lookup?",
    "What causes a deadlock?",
    "What does HTTP 503 mean?",
    "How long should a client wait before retrying?",
    "difference between a cross-encoder and a bi-encoder",
    "Where can I eat crème brûlée?",
    "When should I plant tomatoes?",
    "How many strings does a violin have?",
    "Do solar panels work when it is cloudy?",
    "How long do cats sleep?",
    "passport validity rules for travel",
)

SURROGATES = ("\ud83d", "\udc00", "ab\ud800cd", "\udfff")


def make_passage(rng: random.Random, sentences: tuple[int, int] = (1, 4), tag: str | None = None) -> str:
    text = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(*sentences)))
    return f"{tag} {text}" if tag else text


# -- the server ---------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """The process's resident set size (VmRSS) in MiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """``python -m rankserve.cli serve`` on 127.0.0.1 in a child process, its output in a log file.
    The child gets no RANKSERVE_* / NIM_* variables: only these flags set it up, as in the reference."""

    def __init__(self, opts: Options, *flags: str, log_level: str = "info", name: str = "server"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir = Path(opts.log_dir or tempfile.mkdtemp(prefix="rankserve-soak-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "rankserve.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            log_level,
            "--device",
            opts.device,
            *(["--model", opts.model] if opts.model else []),
            *opts.serve_args,
            *flags,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RANKSERVE_", "NIM_"))}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds until /v1/health/ready answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/v1/health/ready", timeout=5).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> float | None:
        return rss_mb(self.pid)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def gemm(self) -> str | None:
        """The server's start-up choice of CPU GEMM (``--cpu-gemm auto`` times both: it can vary by run)."""
        found = re.findall(r"cpu gemm: (.*)", self.log_text())
        return found[0] if found else None

    def log_errors(self) -> list[str]:
        """Log lines at ERROR / CRITICAL and traceback starts (a healthy run writes none)."""
        return [
            line
            for line in self.log_text().splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        ]


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m and not line.startswith("#"):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric(samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


# -- the reference --------------------------------------------------------------------------------------


@dataclass
class Call:
    """One valid request and what it asks the engine for."""

    kind: str  # ranking | hosted | cohere | tei | embeddings
    path: str
    body: dict
    query: str | None
    texts: list[str]
    top: int | None = None  # top_k / top_n
    raw: bool = False  # TEI raw_scores
    echo: bool = False  # Cohere return_documents / TEI return_text
    input_type: str | None = None
    truncate: str = "END"
    dims: int | None = None
    b64: bool = False
    model: str | None = None  # the model field of an embeddings request
    expected: Any = None  # scores (rank) or vectors (embed), from the reference
    tokens: int | None = None


def serve_overrides(args) -> dict[str, Any]:
    """``rankserve serve`` flags (e.g. ``--cpu-gemm torch``) as config overrides, for the reference."""
    from rankserve.cli import add_config_flags
    from rankserve.config import FIELDS

    parser = argparse.ArgumentParser(add_help=False)
    add_config_flags(parser)
    parsed = parser.parse_args(list(args))
    return {k: getattr(parsed, k) for k in FIELDS if getattr(parsed, k, None) is not None}


class Reference:
    """rankserve's own Engine in this process, on its own event loop: the expected answers (with the
    same ``serve_args`` as the servers)."""

    def __init__(self, opts: Options):
        from rankserve.config import load_config
        from rankserve.engine.engine import Engine
        from rankserve.metrics import Metrics

        overrides = {**serve_overrides(opts.serve_args), "model": opts.model, "device": opts.device, "warmup": False}
        self.loop = asyncio.new_event_loop()
        t = time.perf_counter()
        self.engine = Engine.load(load_config(overrides, environ={}), Metrics())
        self.loop.run_until_complete(self.engine.start())
        self.load_s = time.perf_counter() - t
        spec = self.engine.spec
        self.name = self.engine.name
        self.kind = spec.kind  # embedder | cross-encoder
        self.hidden = spec.hidden_size
        self.dimensions = spec.dimensions
        self.asymmetric = self.engine.asymmetric

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.stop())
        self.loop.close()

    def expect(self, calls: list[Call], chunk: int = 32) -> float:
        """Fill ``expected`` and ``tokens`` of each call; returns seconds taken."""
        todo = [c for c in calls if c.expected is None]

        async def one(c: Call) -> None:
            if c.kind == "embeddings":
                r = await self.engine.embed(c.texts, c.input_type, c.truncate, c.dims)
                c.expected, c.tokens = r.vectors.astype(np.float64), r.tokens
            else:
                r = await self.engine.rank(c.query, c.texts, c.truncate)
                c.expected, c.tokens = list(r.scores), r.tokens

        async def run() -> None:
            for i in range(0, len(todo), chunk):
                await asyncio.gather(*(one(c) for c in todo[i : i + chunk]))

        t = time.perf_counter()
        self.loop.run_until_complete(run())
        return time.perf_counter() - t

    def relevance(self, logit: float, raw: bool = False) -> float:
        """What compat routes return: the cosine for bi-encoders, else sigmoid(logit) unless raw."""
        if raw or self.kind == "embedder":
            return logit
        return 1 / (1 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1 + math.exp(logit))


# -- requests -------------------------------------------------------------------------------------------


def make_call(rng: random.Random, ref: Reference, kind: str, passages: list[str], query: str) -> Call:
    """A valid request of ``kind`` over ``passages`` with random optional fields."""
    n = len(passages)
    if kind == "embeddings":
        texts = passages if n > 1 or rng.random() < 0.5 else passages[:1]
        single = len(texts) == 1 and rng.random() < 0.5
        body: dict[str, Any] = {"input": texts[0] if single else texts}
        input_type = rng.choice(["query", "passage", None]) if not ref.asymmetric else rng.choice(["query", "passage"])
        model = None
        if rng.random() < 0.15:  # the id suffixed -query / -passage sets input_type
            input_type = rng.choice(["query", "passage"])
            model = f"{ref.name}-{input_type}"
        elif rng.random() < 0.5:
            model = ref.name
        if model:
            body["model"] = model
        if input_type and not (model or "").endswith(input_type):
            body["input_type"] = input_type
        truncate = rng.choice(["END", "START", "NONE"])  # texts here fit the model: NONE is fine
        if truncate != "NONE" or rng.random() < 0.5:
            body["truncate"] = truncate
        dims = None
        if rng.random() < 0.3:
            dims = rng.choice(ref.dimensions) if ref.dimensions else rng.choice([32, 128, 256, ref.hidden])
            body["dimensions"] = dims
        b64 = rng.random() < 0.3
        if b64:
            body["encoding_format"] = "base64"
        elif rng.random() < 0.3:
            body["encoding_format"] = "float"
        return Call(
            kind,
            "/v1/embeddings",
            body,
            None,
            texts,
            input_type=input_type,
            truncate=truncate,
            dims=dims,
            b64=b64,
            model=model,
        )
    top = rng.randint(1, n) if rng.random() < 0.25 else None
    if kind in ("ranking", "hosted"):
        body = {"query": {"text": query}, "passages": [{"text": p} for p in passages]}
        if rng.random() < 0.5:
            body["model"] = ref.name
        if rng.random() < 0.3:
            body["truncate"] = "END"
        if top is not None:
            body[rng.choice(["top_k", "top_n"])] = top
        path = "/v1/ranking"
        if kind == "hosted":
            org, _, model = ref.name.rpartition("/")
            path = f"/v1/retrieval/{org or 'nvidia'}/{model}/reranking"
        return Call(kind, path, body, query, passages, top=top)
    if kind == "cohere":
        docs = [p if rng.random() < 0.5 else {"text": p} for p in passages]
        body = {"query": query, "documents": docs}
        if rng.random() < 0.5:
            body["model"] = ref.name
        if top is not None:
            body["top_n"] = top
        echo = rng.random() < 0.3
        if echo or rng.random() < 0.3:
            body["return_documents"] = echo
        return Call(kind, rng.choice(["/v1/rerank", "/v2/rerank"]), body, query, passages, top=top, echo=echo)
    if kind == "tei":
        body = {"query": query, "texts": passages}
        raw = rng.random() < 0.5
        echo = rng.random() < 0.3
        if raw or rng.random() < 0.3:
            body["raw_scores"] = raw
        if echo or rng.random() < 0.3:
            body["return_text"] = echo
        if rng.random() < 0.3:
            body["truncate"] = True
        return Call(kind, "/rerank", body, query, passages, raw=raw, echo=echo)
    raise ValueError(kind)


def kinds_for(ref: Reference) -> list[tuple[str, float]]:
    kinds = [("ranking", 0.35), ("hosted", 0.05), ("cohere", 0.2), ("tei", 0.15), ("embeddings", 0.25)]
    return kinds if ref.kind == "embedder" else kinds[:-1]  # a cross-encoder has no embeddings


def soak_pool(
    rng: random.Random, ref: Reference, distinct: int, pool_size: int, passages: tuple[int, int] = (1, 20)
) -> list[Call]:
    """``distinct`` valid requests of ``passages`` (low, high) passages or inputs each, over a shared
    pool of passages (repeats warm the passage cache, as real traffic does; a pool much larger than
    ``distinct`` x passages leaves it cold); a few passages are long enough to be truncated."""
    pool = [make_passage(rng, (8, 20) if rng.random() < 0.05 else (1, 4)) for _ in range(pool_size)]
    short = [p for p in pool if len(p) < 600]  # embeddings inputs: within the model's limit
    names, weights = zip(*kinds_for(ref))
    calls = []
    for _ in range(distinct):
        kind = rng.choices(names, weights)[0]
        n = rng.randint(*passages)
        texts = rng.sample(short if kind == "embeddings" else pool, n)
        if kind == "embeddings" and rng.random() < 0.3:
            texts[0] = rng.choice(QUERIES)
        calls.append(make_call(rng, ref, kind, texts, rng.choice(QUERIES)))
    return calls


def heavy_calls(rng: random.Random, ref: Reference, n: int, passages: int, prefix: str) -> list[Call]:
    """Requests with ``passages`` distinct passages each (tagged: they miss the passage cache)."""
    names = [k for k, _ in kinds_for(ref)]
    return [
        make_call(
            rng,
            ref,
            names[i % len(names)],
            [make_passage(rng, (1, 3), tag=f"[{prefix}{i}.{j}]") for j in range(passages)],
            rng.choice(QUERIES),
        )
        for i in range(n)
    ]


def invalid_request(rng: random.Random, ref: Reference) -> tuple[str, str, bytes]:
    """(name, path, raw body) of a request that must get a 4xx with an error object."""
    q, p = rng.choice(QUERIES), rng.choice(SENTENCES)
    sur = rng.choice(SURROGATES)
    dumps = json.dumps  # ensure_ascii: a lone surrogate travels as its \\udXXX escape
    cases = [
        ("ranking_empty_query", "/v1/ranking", dumps({"query": {"text": ""}, "passages": [{"text": p}]})),
        ("ranking_blank_query", "/v1/ranking", dumps({"query": {"text": "  \t "}, "passages": [{"text": p}]})),
        ("ranking_surrogate_query", "/v1/ranking", dumps({"query": {"text": q + sur}, "passages": [{"text": p}]})),
        (
            "ranking_surrogate_passage",
            "/v1/ranking",
            dumps({"query": {"text": q}, "passages": [{"text": p}, {"text": sur + p}]}),
        ),
        ("cohere_surrogate_document", "/v1/rerank", dumps({"query": q, "documents": [p, {"text": p + sur}]})),
        ("tei_surrogate_text", "/rerank", dumps({"query": q, "texts": [p, sur]})),
        ("ranking_passages_not_list", "/v1/ranking", dumps({"query": {"text": q}, "passages": p})),
        ("ranking_query_int", "/v1/ranking", dumps({"query": {"text": 5}, "passages": [{"text": p}]})),
        ("ranking_top_k_string", "/v1/ranking", dumps({"query": {"text": q}, "passages": [{"text": p}], "top_k": "2"})),
        ("ranking_top_k_zero", "/v1/ranking", dumps({"query": {"text": q}, "passages": [{"text": p}], "top_k": 0})),
        ("ranking_no_passages", "/v1/ranking", dumps({"query": {"text": q}, "passages": []})),
        (
            "ranking_bad_truncate",
            "/v1/ranking",
            dumps({"query": {"text": q}, "passages": [{"text": p}], "truncate": "MIDDLE"}),
        ),
        ("ranking_body_array", "/v1/ranking", b"[]"),
        (
            "ranking_nan_top_k",
            "/v1/ranking",
            '{"query": {"text": %s}, "passages": [{"text": %s}], "top_k": NaN}' % (dumps(q), dumps(p)),
        ),
        (
            "cohere_infinity_top_n",
            "/v1/rerank",
            '{"query": %s, "documents": [%s], "top_n": Infinity}' % (dumps(q), dumps(p)),
        ),
        ("cohere_documents_ints", "/v1/rerank", dumps({"query": q, "documents": [1, 2]})),
        ("tei_nan_raw_scores", "/rerank", '{"query": %s, "texts": [%s], "raw_scores": NaN}' % (dumps(q), dumps(p))),
        ("tei_left_truncation", "/rerank", dumps({"query": q, "texts": [p], "truncation_direction": "Left"})),
        (
            "ranking_unknown_model",
            "/v1/ranking",
            dumps({"model": "no-such/model", "query": {"text": q}, "passages": [{"text": p}]}),
        ),
        ("cohere_unknown_model", "/v1/rerank", dumps({"model": "no-such/model", "query": q, "documents": [p]})),
        (
            "hosted_unknown_model",
            "/v1/retrieval/nvidia/no-such-model/reranking",
            dumps({"query": {"text": q}, "passages": [{"text": p}]}),
        ),
        ("ranking_invalid_json", "/v1/ranking", '{"query": {"text": %s}, "passages": [' % dumps(q)),
        ("cohere_invalid_json", "/v1/rerank", '{"query": %s,, }' % dumps(q)),
        ("ranking_not_utf8", "/v1/ranking", b'{"query": {"text": "caf\xe9"}, "passages": [{"text": "x"}]}'),
    ]
    if ref.kind == "embedder":
        cases += [
            ("embeddings_surrogate_input", "/v1/embeddings", dumps({"input": [p, q + sur]})),
            ("embeddings_surrogate_string", "/v1/embeddings", dumps({"input": sur})),
            ("embeddings_input_object", "/v1/embeddings", dumps({"input": {"text": p}})),
            ("embeddings_empty_list", "/v1/embeddings", dumps({"input": []})),
            ("embeddings_empty_string", "/v1/embeddings", dumps({"input": [p, ""]})),
            ("embeddings_nan_dimensions", "/v1/embeddings", '{"input": [%s], "dimensions": NaN}' % dumps(p)),
            ("embeddings_dimensions_zero", "/v1/embeddings", dumps({"input": [p], "dimensions": 0})),
            ("embeddings_unknown_model", "/v1/embeddings", dumps({"input": [p], "model": "no-such/model"})),
            ("embeddings_bad_input_type", "/v1/embeddings", dumps({"input": [p], "input_type": "document"})),
            ("embeddings_invalid_json", "/v1/embeddings", '{"input": [%s' % dumps(p)),
        ]
    name, path, body = rng.choice(cases)
    return name, path, body if isinstance(body, bytes) else body.encode("utf-8")


# -- checking answers -----------------------------------------------------------------------------------


def check_order(
    pairs: list[tuple[int, float]], expected: list[float], top: int | None, tol: float, index_ties: bool = True
) -> str | None:
    """(index, score) pairs as returned vs the reference scores (already mapped to what the route returns).
    The server sorts by its raw score, then index: ``index_ties`` checks that rule on equal scores (not
    where a sigmoid may map two different logits to one float)."""
    n = len(expected)
    idx = [i for i, _ in pairs]
    if any(not isinstance(i, int) or not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
        return f"indices {idx} are not distinct positions of {n} passages"
    want = n if top is None else min(top, n)
    if len(idx) != want:
        return f"{len(idx)} results, expected {want}"
    for i, score in pairs:
        if not isinstance(score, (int, float)) or not abs(score - expected[i]) <= tol:
            return f"score of index {i} is {score!r}, reference {expected[i]!r} (tolerance {tol:g})"
    for (i, a), (j, b) in zip(pairs, pairs[1:]):
        if a < b or (index_ties and a == b and i > j):
            return f"not sorted by score: index {i} ({a}) before index {j} ({b})"
    if top is not None and len(idx) < n:
        lowest = pairs[-1][1]
        missed = [j for j in range(n) if j not in set(idx) and expected[j] > lowest + tol]
        if missed:
            return f"top {top} leaves out index {missed[0]} (reference {expected[missed[0]]} > {lowest})"
    return None


def check_answer(call: Call, r: httpx.Response, ref: Reference, tol: float) -> str | None:
    """None if the 200 answer is right, else why not."""
    try:
        j = r.json()
        if call.kind in ("ranking", "hosted"):
            pairs = [(e["index"], e["logit"]) for e in j["rankings"]]
            if j["usage"]["prompt_tokens"] != call.tokens or j["usage"]["total_tokens"] != call.tokens:
                return f"usage {j['usage']} != reference tokens {call.tokens}"
            return check_order(pairs, call.expected, call.top, tol)
        if call.kind == "cohere":
            res = j["results"]
            for e in res:
                if call.echo and e.get("document") != {"text": call.texts[e["index"]]}:
                    return f"document of index {e['index']} is {e.get('document')!r}"
                if not call.echo and "document" in e:
                    return "a document was returned without return_documents"
            if j["meta"]["tokens"]["input_tokens"] != call.tokens:
                return f"meta {j['meta']} != reference tokens {call.tokens}"
            return check_order(
                [(e["index"], e["relevance_score"]) for e in res],
                [ref.relevance(x) for x in call.expected],
                call.top,
                tol,
                ref.kind == "embedder",
            )
        if call.kind == "tei":
            for e in j:
                if call.echo and e.get("text") != call.texts[e["index"]]:
                    return f"text of index {e['index']} is {e.get('text')!r}"
                if not call.echo and "text" in e:
                    return "a text was returned without return_text"
            return check_order(
                [(e["index"], e["score"]) for e in j],
                [ref.relevance(x, call.raw) for x in call.expected],
                None,
                tol,
                call.raw or ref.kind == "embedder",
            )
        if call.kind == "embeddings":
            data = j["data"]
            if [d["index"] for d in data] != list(range(len(call.texts))):
                return f"data indices {[d['index'] for d in data]} for {len(call.texts)} inputs"
            if j["usage"]["prompt_tokens"] != call.tokens:
                return f"usage {j['usage']} != reference tokens {call.tokens}"
            if j["model"] != (call.model or ref.name):
                return f"model {j['model']!r}"
            for d, want in zip(data, call.expected):
                got = (
                    np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                    if call.b64
                    else np.asarray(d["embedding"], dtype=np.float64)
                )
                if got.shape != want.shape:
                    return f"vector {d['index']} has {got.shape[0]} components, reference {want.shape[0]}"
                diff = float(np.max(np.abs(got - want)))
                if not diff <= tol:
                    return f"vector {d['index']} differs from the reference by {diff:g} (tolerance {tol:g})"
            return None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"malformed answer: {type(exc).__name__}: {exc}: {r.text[:200]!r}"
    raise ValueError(call.kind)


def error_object_problem(r: httpx.Response) -> str | None:
    """None if the body is rankserve's error shape ({"error": {message, type, code}})."""
    try:
        err = r.json()["error"]
        if not (
            isinstance(err, dict)
            and isinstance(err.get("message"), str)
            and err.get("code") == r.status_code
            and isinstance(err.get("type"), str)
        ):
            return f"error object {err!r}"
    except (ValueError, KeyError, TypeError) as exc:
        return f"no error object ({type(exc).__name__}): {r.text[:200]!r}"
    return None


# -- bookkeeping ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    wrong: int = 0
    status_5xx: int = 0
    valid_sent: int = 0
    valid_ok: int = 0
    valid_4xx: int = 0
    invalid_sent: int = 0
    invalid_4xx: int = 0
    invalid_accepted: int = 0  # an invalid request answered 2xx
    invalid_no_error_object: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # passages/inputs of each latencies_ms entry
    by_route: dict[str, int] = field(default_factory=dict)
    invalid_status: dict[str, dict[str, int]] = field(default_factory=dict)
    lost_kinds: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def note(self, why: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(why)


JSON = {"content-type": "application/json"}


async def post(
    http: httpx.AsyncClient, url: str, *, body: dict | None = None, raw: bytes | None = None
) -> tuple[httpx.Response | None, float, str | None]:
    """(response or None, seconds, transport error name or None)."""
    t = time.perf_counter()
    try:
        if raw is not None:
            r = await http.post(url, content=raw, headers=JSON)
        else:
            r = await http.post(url, json=body)
        return r, time.perf_counter() - t, None
    except httpx.TransportError as exc:
        return None, time.perf_counter() - t, type(exc).__name__


def arrived(t: Tally, path: str, r: httpx.Response | None, err: str | None, what: str) -> bool:
    """Count one request sent to ``path``: answered, or lost (no response) with its error kind."""
    t.sent += 1
    t.by_route[path] = t.by_route.get(path, 0) + 1
    if r is None:
        t.lost += 1
        t.lost_kinds[err] = t.lost_kinds.get(err, 0) + 1
        t.note(f"lost {what}: {err}")
        return False
    t.answered += 1
    return True


def record_valid(
    t: Tally, call: Call, r: httpx.Response | None, seconds: float, err: str | None, ref: Reference, tol: float
) -> None:
    t.valid_sent += 1
    if not arrived(t, call.path, r, err, f"{call.kind} {call.path}"):
        return
    if r.status_code >= 500:
        t.status_5xx += 1
        t.note(f"{r.status_code} for valid {call.kind}: {r.text[:200]}")
    elif r.status_code >= 400:
        t.valid_4xx += 1
        t.note(f"{r.status_code} for valid {call.kind} {json.dumps(call.body)[:200]}: {r.text[:200]}")
    elif r.status_code != 200:
        t.wrong += 1
        t.note(f"{r.status_code} for valid {call.kind}")
    else:
        why = check_answer(call, r, ref, tol)
        if why is None:
            t.valid_ok += 1
            t.latencies_ms.append(seconds * 1000)
            t.sizes.append(len(call.texts))
        else:
            t.wrong += 1
            t.note(f"wrong {call.kind} {call.path}: {why}")


def record_invalid(t: Tally, name: str, path: str, r: httpx.Response | None, err: str | None) -> None:
    t.invalid_sent += 1
    if not arrived(t, path, r, err, f"invalid {name}"):
        return
    hist = t.invalid_status.setdefault(name, {})
    hist[str(r.status_code)] = hist.get(str(r.status_code), 0) + 1
    if r.status_code >= 500:
        t.status_5xx += 1
        t.note(f"{r.status_code} for invalid {name}: {r.text[:200]}")
    elif r.status_code < 400:
        t.invalid_accepted += 1
        t.wrong += 1
        t.note(f"{r.status_code} for invalid {name}: {r.text[:200]}")
    else:
        why = error_object_problem(r)
        if why is None:
            t.invalid_4xx += 1
        else:
            t.invalid_no_error_object += 1
            t.wrong += 1
            t.note(f"{r.status_code} for invalid {name} without an error object: {why}")


def latency_summary(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 0.99), "max_ms": max(ms)}


def latency_by_size(sizes: list[int], ms: list[float], groups: int = 3) -> dict[str, dict]:
    """p50 / p99 per third of the request sizes seen ("1-10": ...): where the tail comes from."""
    if not ms:
        return {}
    lo, hi = min(sizes), max(sizes)
    step = max(1, -(-(hi - lo + 1) // groups))
    out: dict[str, dict] = {}
    for start in range(lo, hi + 1, step):
        end = min(hi, start + step - 1)
        part = [m for n, m in zip(sizes, ms) if start <= n <= end]
        if part:
            out[f"{start}-{end}"] = {"n": len(part), **latency_summary(part)}
    return out


def finish(result: dict, checks: dict[str, bool]) -> dict:
    result["checks"] = checks
    result["failed"] = [k for k, ok in checks.items() if not ok]
    result["ok"] = not result["failed"]
    return result


async def get_metrics(url: str) -> list:
    async with httpx.AsyncClient(timeout=30) as http:
        return parse_metrics((await http.get(url + "/v1/metrics")).text)


# -- phases ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    model: str | None = None  # model directory; None = the packaged default
    device: str = "cpu"
    serve_args: tuple[str, ...] = ()  # more `rankserve serve` flags, for every server and the reference
    seed: int = 0
    tolerance: float = 1e-5
    timeout: float = 300.0  # client-side seconds per request before it counts as lost
    log_dir: str | None = None  # server logs (default: a new temp dir)
    # soak
    clients: int = 64
    seconds: float = 60.0
    # Keep sending past ``seconds`` until this many valid and invalid requests went out (at most
    # 10x ``seconds``): on a slow or busy machine a short soak still exercises both kinds.
    min_valid: int = 0
    min_invalid: int = 0
    distinct: int = 200  # distinct valid requests
    passage_pool: int = 400  # distinct passages they draw from
    passages: str = "1-20"  # passages (or embedding inputs) per valid request, low-high
    invalid_fraction: float = 0.2
    max_rss_growth_mb: float | None = None  # fail if RSS grows more than this over the soak's second half
    # overload
    overload_queue: int = 8  # --max-queue-requests
    overload_requests: int = 64  # sent at once, per wave
    overload_passages: int = 48
    overload_waves: int = 2
    # sigterm
    sigterm_requests: int = 16
    sigterm_passages: int = 24
    drain_timeout: float = 30.0
    settle: float = 30.0  # at most this many seconds for the batch to be admitted before SIGTERM


def passage_range(text: str) -> tuple[int, int]:
    """``"1-30"`` -> (1, 30); ``"5"`` -> (5, 5)."""
    low, _, high = text.partition("-")
    lo, hi = int(low), int(high or low)
    if not 1 <= lo <= hi:
        raise ValueError(f"--passages {text!r}: want LOW-HIGH with 1 <= LOW <= HIGH")
    return lo, hi


def run_soak(opts: Options, ref: Reference) -> dict:
    rng = random.Random(opts.seed)
    calls = soak_pool(rng, ref, opts.distinct, opts.passage_pool, passage_range(opts.passages))
    ref_s = ref.expect(calls)
    server = Server(opts, name="soak")
    ready_s = server.wait_ready()
    try:
        result = asyncio.run(_soak(opts, ref, server, calls))
        result["server_log_errors"] = server.log_errors()[:20]
        result["server_cpu_gemm"] = server.gemm()
    finally:
        exit_code = server.stop()
    result.update(
        reference_s=round(ref_s, 1),
        server_ready_s=round(ready_s, 1),
        server_exit=exit_code,
        server_log=str(server.log_path),
        distinct_requests=len(calls),
    )
    t = result
    checks = {
        "no request lost": t["lost"] == 0,
        "no wrong answer": t["wrong"] == 0,
        "no 5xx": t["status_5xx"] == 0,
        "no 4xx for a valid request": t["valid_4xx"] == 0,
        "every invalid request got a 4xx with an error object": t["invalid_4xx"] == t["invalid_sent"],
        "every valid request answered correctly": t["valid_ok"] == t["valid_sent"],
        "server still ready after the phase": t["ready_after"],
        "server-side 5xx count is 0": t["server_5xx"] == 0,
        "server log has no errors": not t["server_log_errors"],
        "requests were sent": t["valid_sent"] > 0 and t["invalid_sent"] > 0,
    }
    if opts.max_rss_growth_mb is not None:
        growth = t["rss_drift_second_half_mb"]
        checks[f"RSS grew <= {opts.max_rss_growth_mb:g} MB over the second half"] = (
            growth is not None and growth <= opts.max_rss_growth_mb
        )
    return finish(result, checks)


async def _soak(opts: Options, ref: Reference, server: Server, calls: list[Call]) -> dict:
    tally = Tally()
    rss: list[tuple[float, float]] = []
    rss_before = server.rss()
    start = time.monotonic()
    deadline, hard_stop = start + opts.seconds, start + 10 * opts.seconds
    done = asyncio.Event()

    def keep_going() -> bool:
        now = time.monotonic()
        short = tally.valid_sent < opts.min_valid or tally.invalid_sent < opts.min_invalid
        return now < deadline or (short and now < hard_stop)

    async def sample() -> None:
        while not done.is_set():
            value = server.rss()
            if value is not None:
                rss.append((time.monotonic() - start, value))
            try:
                await asyncio.wait_for(done.wait(), 0.5)
            except TimeoutError:
                pass

    async def client(k: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(opts.seed * 1000 + k + 1)
        while keep_going():
            if rng.random() < opts.invalid_fraction:
                name, path, raw = invalid_request(rng, ref)
                r, _s, err = await post(http, server.url + path, raw=raw)
                record_invalid(tally, name, path, r, err)
            else:
                call = rng.choice(calls)
                r, s, err = await post(http, server.url + call.path, body=call.body)
                record_valid(tally, call, r, s, err, ref, opts.tolerance)

    limits = httpx.Limits(max_connections=opts.clients, max_keepalive_connections=opts.clients)
    sampler = asyncio.create_task(sample())
    async with httpx.AsyncClient(timeout=opts.timeout, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(opts.clients)))
    seconds = time.monotonic() - start
    done.set()
    await sampler
    rss_after = server.rss()
    async with httpx.AsyncClient(timeout=30) as http:
        ready_after = (await http.get(server.url + "/v1/health/ready")).status_code == 200
    samples = await get_metrics(server.url)
    server_5xx = sum(
        v
        for n, lab, v in samples  # readiness is 503 while the model loads: not counted
        if n == "rankserve_requests_total"
        and lab.get("status", "").startswith("5")
        and lab.get("route") != "/v1/health/ready"
    )
    half = [v for s, v in rss if s >= opts.seconds / 2]
    out = {k: v for k, v in asdict(tally).items() if k not in ("latencies_ms", "sizes")}
    out.update(latency_summary(tally.latencies_ms))
    out["latency_by_size"] = latency_by_size(tally.sizes, tally.latencies_ms)
    out.update(
        seconds=round(seconds, 1),
        clients=opts.clients,
        requests_per_s=round(tally.sent / seconds, 1),
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        rss_max_mb=max((v for _, v in rss), default=None),
        rss_at_half_mb=half[0] if half else None,
        rss_drift_mb=None if rss_before is None or rss_after is None else rss_after - rss_before,
        rss_drift_second_half_mb=None if not half or rss_after is None else rss_after - half[0],
        rss_series=[(round(s, 1), round(v, 1)) for s, v in rss[:: max(1, len(rss) // 60)]],
        ready_after=ready_after,
        server_5xx=server_5xx,
    )
    return out


def run_overload(opts: Options, ref: Reference) -> dict:
    rng = random.Random(opts.seed + 1)
    waves = [
        heavy_calls(rng, ref, opts.overload_requests, opts.overload_passages, f"o{w}.")
        for w in range(opts.overload_waves)
    ]
    server = Server(opts, "--max-queue-requests", str(opts.overload_queue), name="overload")
    ready_s = server.wait_ready()
    try:
        outcomes, after = asyncio.run(_overload(opts, server, waves))
        log_errors = server.log_errors()[:20]
        gemm = server.gemm()
    finally:
        exit_code = server.stop()
    admitted = [c for c, (r, _s, _e) in outcomes if r is not None and r.status_code == 200]
    ref_s = ref.expect(admitted)
    ok_ms, busy_ms, lost, other, wrong, no_retry_after, examples = [], [], 0, 0, 0, 0, []
    for call, (r, s, err) in outcomes:
        if r is None:
            lost += 1
            examples.append(f"lost: {err}")
        elif r.status_code == 200:
            why = check_answer(call, r, ref, opts.tolerance)
            if why is None:
                ok_ms.append(s * 1000)
            else:
                wrong += 1
                examples.append(f"wrong {call.kind}: {why}")
        elif r.status_code == 503 and _error_type(r) == "overloaded":
            busy_ms.append(s * 1000)
            if not r.headers.get("retry-after", "").isdigit():
                no_retry_after += 1
                examples.append(f"503 without Retry-After: {dict(r.headers)}")
        else:
            other += 1
            examples.append(f"{r.status_code}: {r.text[:200]}")
    ok, busy = latency_summary(ok_ms), latency_summary(busy_ms)
    result = {
        "max_queue_requests": opts.overload_queue,
        "waves": opts.overload_waves,
        "sent": len(outcomes),
        "passages_per_request": opts.overload_passages,
        "status_200": len(admitted),
        "correct_200": len(ok_ms),
        "status_503": len(busy_ms),
        "lost": lost,
        "wrong": wrong,
        "other_status": other,
        "503_without_retry_after": no_retry_after,
        "p50_200_ms": ok["p50_ms"],
        "p99_200_ms": ok["p99_ms"],
        "p50_503_ms": busy["p50_ms"],
        "p99_503_ms": busy["p99_ms"],
        "max_503_ms": busy["max_ms"],
        **after,
        "server_exit": exit_code,
        "server_ready_s": round(ready_s, 1),
        "reference_s": round(ref_s, 1),
        "server_log_errors": log_errors,
        "server_log": str(server.log_path),
        "examples": examples[:20],
        "server_cpu_gemm": gemm,
    }
    checks = {
        "503s were returned (capacity reached)": len(busy_ms) > 0,
        "every 503 has Retry-After": no_retry_after == 0,
        "at least max_queue_requests admitted": len(admitted) >= min(opts.overload_queue, opts.overload_requests),
        "every admitted request answered 200 and correctly": wrong == 0 and len(ok_ms) == len(admitted),
        "no status other than 200 / 503 overloaded": other == 0,
        "no request lost": lost == 0,
        "503s are fast (p99 of 503s < p50 of 200s)": bool(busy_ms and ok_ms and busy["p99_ms"] < ok["p50_ms"]),
        "server serves after the overload": after["served_after"],
        "queue empty afterwards": after["queue_depth_after"] == 0 and after["queue_tokens_after"] == 0,
        "server counted the same 503s": after["server_overloaded"] == len(busy_ms),
        "server log has no errors": not log_errors,
        "server exited cleanly": exit_code in (0, -signal.SIGTERM, 128 + signal.SIGTERM),
    }
    return finish(result, checks)


def _error_type(r: httpx.Response) -> str | None:
    try:
        return r.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


async def _overload(opts: Options, server: Server, waves: list[list[Call]]):
    outcomes = []
    limits = httpx.Limits(max_connections=opts.overload_requests, max_keepalive_connections=opts.overload_requests)
    async with httpx.AsyncClient(timeout=opts.timeout, limits=limits) as http:
        for calls in waves:
            got = await asyncio.gather(*(post(http, server.url + c.path, body=c.body) for c in calls))
            outcomes += list(zip(calls, got))
        probe = {"query": {"text": "what does HTTP 503 mean"}, "passages": [{"text": SENTENCES[44]}]}
        served_after = (await http.post(server.url + "/v1/ranking", json=probe)).status_code == 200
    samples = await get_metrics(server.url)
    after = {
        "served_after": served_after,
        "queue_depth_after": metric(samples, "rankserve_queue_depth"),
        "queue_tokens_after": metric(samples, "rankserve_queue_tokens"),
        "server_overloaded": int(metric(samples, "rankserve_rejections_total", reason="overloaded")),
    }
    return outcomes, after


def run_sigterm(opts: Options, ref: Reference) -> dict:
    rng = random.Random(opts.seed + 2)
    calls = heavy_calls(rng, ref, opts.sigterm_requests, opts.sigterm_passages, "s")
    late_body = {
        "query": {"text": "how long should a client wait before retrying"},
        "passages": [{"text": SENTENCES[45]}, {"text": SENTENCES[44]}],
    }
    server = Server(opts, "--drain-timeout", str(opts.drain_timeout), name="sigterm")
    ready_s = server.wait_ready()
    try:
        run = asyncio.run(_sigterm(opts, server, calls, late_body, ref))
    finally:
        server.kill()
        server.stop()
    ref_s = ref.expect(calls)
    inflight_ok, inflight_refused, inflight_bad, examples = 0, 0, 0, []
    answered_after_signal = 0
    for call, (r, _s, err, t_done) in zip(calls, run["inflight"]):
        if r is not None and r.status_code == 200:
            why = check_answer(call, r, ref, opts.tolerance)
            if why is None:
                inflight_ok += 1
                answered_after_signal += t_done > run["t_signal"]
            else:
                inflight_bad += 1
                examples.append(f"in flight, wrong {call.kind}: {why}")
        elif r is not None and r.status_code == 503 and _error_type(r) == "shutting_down":
            inflight_refused += 1
            examples.append(f"in flight (admitted before SIGTERM) refused: {r.text[:200]}")
        else:
            inflight_bad += 1
            examples.append(f"in flight: {err or r.status_code} {'' if r is None else r.text[:200]}")
    late = run["late"]
    late_503 = sum(1 for o in late if o[0] == "503 shutting_down")
    late_refused = sum(1 for o in late if o[0] == "refused")
    late_bad = [o for o in late if o[0] not in ("503 shutting_down", "refused")]
    probes = run["probes"]
    draining = sum(1 for p in probes if p[0] == "503 draining")
    probe_ready = [p for p in probes if p[0] == "200"]
    probe_other = [p for p in probes if p[0] not in ("200", "503 draining", "refused")]
    examples += [f"late request at +{t:.2f} s: {what}" for what, t in late_bad[:5]]
    examples += [f"readiness at +{t:.2f} s: {what}" for what, t in probe_ready[:5] + probe_other[:5]]
    log = server.log_text()
    exit_code = run["exit_code"]
    result = {
        "inflight": len(calls),
        "passages_per_request": opts.sigterm_passages,
        "inflight_200_correct": inflight_ok,
        "inflight_answered_after_sigterm": answered_after_signal,
        "inflight_refused": inflight_refused,
        "inflight_failed": inflight_bad,
        "queue_depth_at_sigterm": run["depth_at_signal"],
        "batch_items": run["batch_items"],
        "admitted_items_at_sigterm": run["admitted_items_at_signal"],
        "sigterm_after_s": round(run["t_signal"], 2),
        "late_sent": len(late),
        "late_503_shutting_down": late_503,
        "late_refused": late_refused,
        "late_other": len(late_bad),
        "late_outcomes": _count(o[0] for o in late),
        "ready_probes": len(probes),
        "ready_503_draining": draining,
        "ready_200_after_sigterm": len(probe_ready),
        "ready_outcomes": _count(p[0] for p in probes),
        "exit_code": exit_code,
        "exit_after_s": run["exit_after_s"],
        "drain_timeout_s": opts.drain_timeout,
        "last_inflight_answer_s": run["last_answer_s"],
        "server_ready_s": round(ready_s, 1),
        "reference_s": round(ref_s, 1),
        "server_log_errors": [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line][:20],
        "drain_log": [line for line in log.splitlines() if "drain" in line.lower()][:5],
        "server_cpu_gemm": server.gemm(),
        "server_log": str(server.log_path),
        "examples": examples[:20],
    }
    checks = {
        "whole batch admitted before SIGTERM": run["admitted_items_at_signal"] >= run["batch_items"],
        "work was in flight at SIGTERM": run["depth_at_signal"] > 0 and answered_after_signal > 0,
        "every in-flight request answered 200 and correctly": inflight_ok == len(calls),
        "requests during the drain got 503 shutting_down or refused": not late_bad,
        "requests during the drain saw 503 shutting_down": late_503 > 0,
        "readiness said 503 draining": draining > 0,
        "readiness never 200 after SIGTERM": not probe_ready and not probe_other,
        "exit status -15 / 143 / 0": exit_code in (0, -signal.SIGTERM, 128 + signal.SIGTERM),
        "exited within the drain timeout": run["exit_after_s"] is not None
        and run["exit_after_s"] <= opts.drain_timeout + 10,
        # Both times are taken by this process's event loop when it gets round to them: the last answer
        # (sent before the exit) may be noted a little after the exit is.
        "exited after the last in-flight answer": run["exit_after_s"] is not None
        and run["last_answer_s"] is not None
        and run["last_answer_s"] <= run["exit_after_s"] + 0.5,
        "server log has no errors": not result["server_log_errors"],
    }
    return finish(result, checks)


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def items_of(call: Call, ref: Reference) -> int:
    """Rows a request puts in the batcher queue: its pairs (cross-encoder), its texts (embeddings), or
    the query plus each passage (bi-encoder ranking; the passages here are distinct and uncached)."""
    return len(call.texts) + (ref.kind == "embedder" and call.kind != "embeddings")


async def _sigterm(opts: Options, server: Server, calls: list[Call], late_body: dict, ref: Reference) -> dict:
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=len(calls))
    http = httpx.AsyncClient(timeout=opts.timeout, limits=limits)
    t0 = time.monotonic()

    async def inflight(c: Call):
        r, s, err = await post(http, server.url + c.path, body=c.body)
        return r, s, err, time.monotonic() - t0

    # SIGTERM once every request of the batch is admitted (its items are queued or done: queue depth
    # + rows already through the model == the batch's items) and work is still queued.
    base = metric(await get_metrics(server.url), "rankserve_batch_size_sum")
    want = sum(items_of(c, ref) for c in calls)
    tasks = [asyncio.ensure_future(inflight(c)) for c in calls]
    deadline = time.monotonic() + opts.settle
    admitted = depth = 0.0
    while time.monotonic() < deadline:
        samples = await get_metrics(server.url)
        depth = metric(samples, "rankserve_queue_depth")
        admitted = depth + metric(samples, "rankserve_batch_size_sum") - base
        if admitted >= want:
            break
        await asyncio.sleep(0.02)
    t_signal = time.monotonic() - t0
    server.proc.send_signal(signal.SIGTERM)
    exited = loop.run_in_executor(None, server.proc.wait)
    late: list[tuple[str, float]] = []
    probes: list[tuple[str, float]] = []

    async def late_sender() -> None:
        await asyncio.sleep(0.02)
        async with httpx.AsyncClient(timeout=30) as c:
            while not exited.done():
                t = time.monotonic() - t0 - t_signal
                r, _s, err = await post(c, server.url + "/v1/ranking", body=late_body)
                late.append((_late_outcome(r, err), t))
                await asyncio.sleep(0.1)

    async def prober() -> None:
        await asyncio.sleep(0.02)
        async with httpx.AsyncClient(timeout=30) as c:
            while not exited.done():
                t = time.monotonic() - t0 - t_signal
                try:
                    r = await c.get(server.url + "/v1/health/ready")
                    body = r.json() if r.status_code == 503 else {}
                    probes.append((f"{r.status_code} {body.get('status', '')}".strip(), t))
                except httpx.TransportError as exc:
                    probes.append(("refused" if type(exc).__name__ in CLOSED else type(exc).__name__, t))
                except ValueError as exc:
                    probes.append((type(exc).__name__, t))
                await asyncio.sleep(0.05)

    helpers = [asyncio.ensure_future(late_sender()), asyncio.ensure_future(prober())]
    exit_code: int | None = None
    try:
        exit_code = await asyncio.wait_for(asyncio.shield(exited), opts.drain_timeout + 30)
        exit_after = time.monotonic() - t0 - t_signal
    except TimeoutError:
        exit_after = None
        server.proc.kill()  # else the thread waiting for it keeps asyncio.run from returning
    results = await asyncio.gather(*tasks)
    await asyncio.gather(*helpers)
    await http.aclose()
    answers = [t for r, _s, _e, t in results if r is not None]
    return {
        "inflight": results,
        "t_signal": t_signal,
        "depth_at_signal": depth,
        "admitted_items_at_signal": admitted,
        "batch_items": want,
        "late": late,
        "probes": probes,
        "exit_code": exit_code,
        "exit_after_s": None if exit_after is None else round(exit_after, 2),
        "last_answer_s": round(max(answers) - t_signal, 2) if answers else None,
    }


# At the very end of a drain the listener and idle connections close; a request that meets a closed
# socket (refused, or closed before the server read it: it was never admitted) is "refused".
CLOSED = ("ConnectError", "RemoteProtocolError", "ReadError")


def _late_outcome(r: httpx.Response | None, err: str | None) -> str:
    if r is None:
        return "refused" if err in CLOSED else err or "error"
    if r.status_code == 503:
        kind = _error_type(r)
        if kind == "shutting_down" and r.headers.get("retry-after", "").isdigit():
            return "503 shutting_down"
        return f"503 {kind} (retry-after {r.headers.get('retry-after')})"
    return str(r.status_code)


# -- report ---------------------------------------------------------------------------------------------

PHASES = {"soak": run_soak, "overload": run_overload, "sigterm": run_sigterm}
SHOWN = {
    "soak": [
        "seconds",
        "clients",
        "sent",
        "answered",
        "lost",
        "wrong",
        "status_5xx",
        "valid_sent",
        "valid_ok",
        "valid_4xx",
        "invalid_sent",
        "invalid_4xx",
        "requests_per_s",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "rss_before_mb",
        "rss_at_half_mb",
        "rss_after_mb",
        "rss_max_mb",
        "rss_drift_mb",
        "rss_drift_second_half_mb",
        "distinct_requests",
        "reference_s",
        "server_cpu_gemm",
    ],
    "overload": [
        "max_queue_requests",
        "waves",
        "sent",
        "passages_per_request",
        "status_200",
        "correct_200",
        "status_503",
        "lost",
        "wrong",
        "other_status",
        "p50_200_ms",
        "p99_200_ms",
        "p50_503_ms",
        "p99_503_ms",
        "max_503_ms",
        "server_overloaded",
        "queue_depth_after",
        "server_exit",
    ],
    "sigterm": [
        "inflight",
        "passages_per_request",
        "batch_items",
        "admitted_items_at_sigterm",
        "sigterm_after_s",
        "queue_depth_at_sigterm",
        "inflight_200_correct",
        "inflight_answered_after_sigterm",
        "inflight_refused",
        "inflight_failed",
        "late_sent",
        "late_503_shutting_down",
        "late_refused",
        "late_other",
        "ready_probes",
        "ready_503_draining",
        "ready_200_after_sigterm",
        "exit_code",
        "exit_after_s",
        "last_inflight_answer_s",
        "drain_timeout_s",
    ],
}


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 or v == int(v) else f"{v:.3g}"
    return str(v)


def table(phase: str, result: dict) -> str:
    rows = [f"### {phase}: {'PASS' if result['ok'] else 'FAIL'}", "", "| figure | value |", "|---|---:|"]
    rows += [f"| {k} | {fmt(result.get(k))} |" for k in SHOWN[phase] if k in result]
    rows += ["", *(f"- [{'x' if ok else ' '}] {name}" for name, ok in result["checks"].items())]
    if not result["ok"]:
        rows += ["", "examples:", *(f"  - {e}" for e in result.get("examples", [])[:10])]
        rows += [f"  - server log: {e}" for e in result.get("server_log_errors", [])[:5]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Options()
    ap.add_argument("--phases", default="soak,overload,sigterm", help="comma-separated: soak, overload, sigterm")
    ap.add_argument("--model", default=None, help="model directory (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--device", default=d.device)
    ap.add_argument(
        "--serve-args",
        default="",
        help="more `rankserve serve` flags, quoted (e.g. '--cpu-gemm torch'): "
        "given to every server and to the reference engine",
    )
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--tolerance", type=float, default=d.tolerance, help="max |score - reference| and vector difference"
    )
    ap.add_argument("--timeout", type=float, default=d.timeout, help="client seconds per request before it is lost")
    ap.add_argument("--clients", type=int, default=d.clients, help="soak: concurrent clients")
    ap.add_argument("--seconds", type=float, default=d.seconds, help="soak: duration")
    ap.add_argument("--distinct", type=int, default=d.distinct, help="soak: distinct valid requests")
    ap.add_argument("--passage-pool", type=int, default=d.passage_pool, help="soak: distinct passages they draw from")
    ap.add_argument("--passages", default=d.passages, help="soak: passages per valid request, LOW-HIGH")
    ap.add_argument("--invalid-fraction", type=float, default=d.invalid_fraction)
    ap.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=None,
        help="soak: fail if the server's RSS grows more than this over the second half (default: report only)",
    )
    ap.add_argument("--overload-queue", type=int, default=d.overload_queue, help="overload: --max-queue-requests")
    ap.add_argument(
        "--overload-requests", type=int, default=d.overload_requests, help="overload: sent at once per wave"
    )
    ap.add_argument("--overload-passages", type=int, default=d.overload_passages)
    ap.add_argument("--overload-waves", type=int, default=d.overload_waves)
    ap.add_argument("--sigterm-requests", type=int, default=d.sigterm_requests, help="sigterm: requests in flight")
    ap.add_argument("--sigterm-passages", type=int, default=d.sigterm_passages)
    ap.add_argument("--drain-timeout", type=float, default=d.drain_timeout)
    ap.add_argument(
        "--settle",
        type=float,
        default=d.settle,
        help="sigterm: SIGTERM goes once the batch is admitted, or after this many seconds",
    )
    ap.add_argument("--log-dir", default=None, help="where server logs go (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write every figure as JSON here")
    args = ap.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s) {sorted(unknown)}; choose from {list(PHASES)}")
    opts = Options(
        **{k: getattr(args, k, getattr(d, k)) for k in asdict(d) if k != "serve_args"},
        serve_args=tuple(shlex.split(args.serve_args)),
    )
    serve_overrides(opts.serve_args)  # a bad flag stops here, not after minutes
    try:
        passage_range(opts.passages)
    except ValueError as exc:
        ap.error(str(exc))
    if opts.log_dir is None:
        opts.log_dir = tempfile.mkdtemp(prefix="rankserve-soak-")
    ref = Reference(opts)
    print(
        f"reference engine: {ref.name} ({ref.kind}) loaded in {ref.load_s:.1f} s; server logs in {opts.log_dir}",
        flush=True,
    )
    results: dict[str, Any] = {"options": asdict(opts), "model": ref.name}
    try:
        for phase in phases:
            t = time.perf_counter()
            results[phase] = PHASES[phase](opts, ref)
            results[phase]["phase_s"] = round(time.perf_counter() - t, 1)
            print(table(phase, results[phase]) + f"\n\n(phase took {results[phase]['phase_s']} s)\n", flush=True)
    finally:
        ref.close()
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    ok = all(results[p]["ok"] for p in phases)
    print(
        "ALL CHECKS PASSED"
        if ok
        else "FAILED: " + "; ".join(f"{p}: {', '.join(results[p]['failed'])}" for p in phases if not results[p]["ok"])
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
