"""The engine: plain Python values in and out; routes and compat APIs call only these methods.

``rank`` scores (query, passage) pairs with a cross-encoder, or, for a bi-encoder, the cosine of
the query's and each passage's embedding (the query encoded once, passages through an LRU cache).
``embed`` returns L2-normalized vectors, Matryoshka-truncated on request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rankserve.config import ServerConfig
from rankserve.engine.backends import ONNX_BACKENDS, Runner, make_runner, recipe_choice, refuse_images_on_onnx
from rankserve.engine.batcher import Batcher, Priority
from rankserve.engine.cache import EmbeddingCache, text_key
from rankserve.engine.outputs import l2_normalize
from rankserve.engine.tokenize import Encoded, TokenizerPolicy, Truncate
from rankserve.errors import InvalidRequest, PayloadTooLarge
from rankserve.metrics import Metrics
from rankserve.model_source import ModelSource, resolve, served_id
from rankserve.models.spec import ModelSpec, with_flags

log = logging.getLogger("rankserve")
InputType = Literal["query", "passage"]
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WARMUP_TOKENS = 512
TOKENIZE_WORKERS = 2  # threads tokenizing requests off the event loop
# The warm-up's long pass is also capped by compute: 512 tokens through a 1B model is ~1 TFLOP,
# 6 s of a 21 s CPU start (bench/cold_start.py) for costs a short pass already pays (kernels
# created, memory pools grown). MiniLM still gets its full 256 tokens; a 1B model 16 on CPU.
WARMUP_FLOPS = {"cpu": 2e10, "cuda": 2e12}
# Padded tokens per forward pass when --max-batch-tokens is 0. On CPU, 2,048-4,096-token batches ran
# 1.1-1.4x faster than 16,384-token ones on the mixed-length workload (bench/engine_offline.py
# --max-batch-tokens sweep, docs/benchmarks.md): each layer's activations stay in cache and
# length-sorted small batches pad attention less. A GPU needs large batches to fill its cores.
BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


def batch_tokens(configured: int, device_type: str) -> int:
    """The token budget per forward pass: the configured one, else the device's default."""
    return configured or BATCH_TOKENS.get(device_type, BATCH_TOKENS["cpu"])


def served_name(config: ServerConfig) -> str:
    """The model id clients see: the configured name, else the default's hub id or the folder name."""
    if config.served_model_name:
        return config.served_model_name
    return DEFAULT_MODEL_NAME if config.model is None else served_id(config.model)


def tokenizer_policy(spec: ModelSpec) -> TokenizerPolicy:
    """How the engine tokenizes for ``spec``: its length limit and rerank template, and token type
    ids only where the model adds token type embeddings (``ModelSpec.token_types``)."""
    return TokenizerPolicy(
        str(spec.tokenizer_file),
        max_length=spec.max_length,
        rerank_template=spec.rerank_template,
        with_type_ids=spec.token_types,
    )


@dataclass(frozen=True)
class RankResult:
    scores: list[float]  # one per passage, request order
    tokens: int  # everything the model read for this request (usage)
    token_counts: list[int]  # per passage: its pair's tokens (its windows' under CHUNK; its own for a bi-encoder)

    @property
    def order(self) -> list[int]:
        """Passage indices best first; equal scores keep request order (every API answers in this order)."""
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # [n, d] float32, request order
    tokens: int
    token_counts: list[int]  # per input, request order


class Engine:
    def __init__(
        self,
        spec: ModelSpec,
        *,
        name: str,
        config: ServerConfig,
        metrics: Metrics,
        device: str = "cpu",
        source: ModelSource | None = None,
    ):
        """``device``: where the model runs, as torch spells it (cpu, cuda, cuda:1); ``source``: the
        folder the model came from and, for a Hub repo, its id and commit (/v1/metadata)."""
        self.spec = spec
        self.source = source or ModelSource(spec.tokenizer_file.parent)
        self.name = name
        self.config = config
        self.metrics = metrics
        self.device = device
        self.device_type = device.partition(":")[0]
        self.policy = tokenizer_policy(spec)
        self.runner: Runner = make_runner(spec, device, config)
        metrics.runtime.labels(self.device_type, config.backend, self.runner.precision, self.runner.gemm or "").set(1)
        self.batcher = Batcher(
            self.runner.forward,
            max_batch_tokens=batch_tokens(config.max_batch_tokens, self.device_type),
            max_queue_items=config.max_queue_items,
            max_queue_tokens=config.max_queue_tokens,
            max_queue_requests=config.max_queue_requests,
            express=config.express_lane and self.runner.concurrent,
            metrics=metrics,
        )
        self.cache = EmbeddingCache(config.cache_size if spec.kind == "embedder" else 0)
        metrics.cache_capacity.set(self.cache.capacity)
        self._tokenize_pool = ThreadPoolExecutor(max_workers=TOKENIZE_WORKERS, thread_name_prefix="rankserve-tokenize")

    @classmethod
    def load(cls, config: ServerConfig, metrics: Metrics) -> Engine:
        """Blocking: read weights and build the engine (call from a thread at start-up).

        The ONNX backends first look for a cached export: with one, the spec comes from its
        spec.json and torch is never imported (a start ~1.5 s shorter, bench/cold_start.py)."""
        source = resolve(config.model, config.revision)  # a Hub repo id is fetched (or found cached) here
        directory = source.path
        choice = recipe_choice(config)
        if config.backend in ONNX_BACKENDS:
            from rankserve.engine.backends.onnx_runner import cached_spec, exported_model

            spec = cached_spec(directory, config.quantize, choice)
            if spec is None:  # first start: load in torch and export before the operator's flags apply
                from rankserve.models.loader import load_model

                spec = load_model(directory, choice=choice)
                refuse_images_on_onnx(spec, config.backend)
                exported_model(spec, config.quantize, choice=choice)
            else:
                log.info(
                    "cached ONNX export of %s (%s, %s) from %s", spec.architecture, spec.family, spec.kind, directory
                )
            spec = with_flags(spec, config.max_length, config.model_overrides())
            return cls(spec, name=served_name(config), config=config, metrics=metrics, device="cpu", source=source)
        from rankserve.engine.backends.torch_runner import resolve_device
        from rankserve.models.loader import load_model, resolve_dtype

        device = resolve_device(config.device)
        spec = load_model(
            directory,
            dtype=resolve_dtype(config.dtype, device),
            device=device,
            max_length=config.max_length,
            overrides=config.model_overrides(),
            choice=choice,
        )
        return cls(spec, name=served_name(config), config=config, metrics=metrics, device=str(device), source=source)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.batcher.start()
        if self.config.warmup:
            await self.warmup()

    def warmup_tokens(self) -> int:
        """The long warm-up passage's length: up to 512 tokens and the model's limit, and at most
        ``WARMUP_FLOPS`` of compute for the device (never under 16 tokens)."""
        budget = int(WARMUP_FLOPS.get(self.device_type, WARMUP_FLOPS["cpu"]) / (2 * max(self.spec.parameters, 1)))
        return max(16, min(self.spec.max_length, WARMUP_TOKENS, budget))

    async def warmup(self) -> None:
        """A short and a longer pass, so the first real request pays no one-time costs."""
        await self.rank("warm up query", ["a short passage", "word " * self.warmup_tokens()], "END")

    async def stop(self) -> None:
        await self.batcher.stop()
        self._tokenize_pool.shutdown(wait=False)

    # -- helpers ---------------------------------------------------------------------------
    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, fn, *args)

    def check_request_tokens(self, tokens: int) -> None:
        """A request's tokens after truncation must fit ``max_request_tokens`` (413 otherwise)."""
        limit = self.config.max_request_tokens
        if tokens > limit:
            raise PayloadTooLarge(
                f"the request holds {tokens} tokens after truncation; the limit is {limit} "
                "per request (max_request_tokens): split it"
            )

    def prefix(self, input_type: InputType | None) -> str:
        if input_type == "query":
            return self.spec.query_prefix
        if input_type == "passage":
            return self.spec.passage_prefix
        return ""

    @property
    def asymmetric(self) -> bool:
        """True when queries and passages get different prefixes: input_type then matters."""
        return self.spec.query_prefix != self.spec.passage_prefix

    # -- API -------------------------------------------------------------------------------
    async def rank(
        self,
        query: str,
        passages: Sequence[str],
        truncate: Truncate = "END",
        priority: Priority = "interactive",
        images: Sequence[str | None] | None = None,
    ) -> RankResult:
        """``images``: per passage, a data URL or None (VL rerankers; a text-only model refuses them)."""
        self.batcher.check_admission(len(passages))  # refuse before tokenizing when full
        if images is not None and any(image is not None for image in images):
            return await self._rank_with_images(query, passages, images, truncate, priority)
        if truncate == "CHUNK":
            return await self._rank_windows(query, passages, priority)
        if self.spec.kind == "cross-encoder":
            return await self._score_pairs(await self._in_pool(self.policy.pairs, query, passages, truncate), priority)
        return await self._rank_by_cosine(query, passages, truncate, priority)

    async def _score_pairs(self, encoded: list[Encoded], priority: Priority) -> RankResult:
        """Cross-encoder pairs (one per passage, request order) within the request's token limit -> logits."""
        counts = [len(e) for e in encoded]
        self.check_request_tokens(sum(counts))
        rows = await self.batcher.submit(encoded, priority)
        return RankResult([float(r) for r in rows], sum(counts), counts)

    async def _rank_with_images(
        self, query: str, passages: Sequence[str], images: Sequence[str | None], truncate: Truncate, priority: Priority
    ) -> RankResult:
        """A VL reranker's request: images decoded and tiled in the tokenize pool, each image passage's
        prompt led by its image tokens (never truncated), tiles sent along with the token ids."""
        vision = self.spec.vision
        first = next(i for i, image in enumerate(images) if image is not None)
        if vision is None:
            raise InvalidRequest(
                f"passages[{first}] has an image, but model {self.name!r} reads text only: send "
                "text passages, or serve a VL reranker (docs/rerankers.md)",
                param=f"passages.{first}.image",
            )
        if truncate == "CHUNK":
            raise InvalidRequest(
                "truncate CHUNK splits long text; it does not apply to passages with images: use END or NONE",
                param="truncate",
            )
        count, limit = sum(image is not None for image in images), self.config.max_request_images
        if count > limit:  # before decoding any: every image costs seconds of CPU and MBs while queued
            raise PayloadTooLarge(
                f"{count} passages have images; the limit is {limit} per request (max_request_images): split it",
                param="passages",
            )
        template = self.spec.rerank_template or ""
        limits = (self.config.max_image_bytes, self.config.max_image_pixels)

        from rankserve.engine.images import image_tiles  # torch: VL models run on the torch backend only

        def encode() -> list[Encoded]:
            pixels = [
                None if image is None else image_tiles(image, f"passages[{i}].image", vision.tiles, *limits)
                for i, image in enumerate(images)
            ]
            templates = [template if px is None else vision.image_text(px.shape[0]) + " " + template for px in pixels]
            encoded = self.policy.pairs(query, passages, truncate, templates)
            return [e if px is None else dataclasses.replace(e, pixels=px) for e, px in zip(encoded, pixels)]

        return await self._score_pairs(await self._in_pool(encode), priority)

    async def _rank_windows(self, query: str, passages: Sequence[str], priority: Priority) -> RankResult:
        """``truncate: CHUNK``: every window of every passage scored (one job), each passage getting
        the max (or mean, ``chunk_aggregate``) of its windows' scores; at most ``chunk_max_windows``
        windows per passage (its first). Usage counts every window scored.
        Bi-encoder windows bypass the passage cache (it holds one vector per passage)."""
        if self.spec.kind == "cross-encoder":
            windows, owners = await self._in_pool(
                self.policy.pair_windows, query, passages, self.config.chunk_max_windows
            )
            lengths = [len(w) for w in windows]
            tokens = sum(lengths)
            self.check_request_tokens(tokens)
            scores = np.stack(await self.batcher.submit(windows, priority)).reshape(-1)
        else:

            def encode() -> tuple[list[Encoded], list[int]]:
                q = self.policy.texts([query], "END", self.spec.query_prefix, "query")
                windows, owners = self.policy.text_windows(
                    passages, self.spec.passage_prefix, limit=self.config.chunk_max_windows
                )
                return q + windows, owners

            encoded, owners = await self._in_pool(encode)
            lengths = [len(e) for e in encoded[1:]]  # the windows' (the query is encoded[0])
            tokens = len(encoded[0]) + sum(lengths)
            self.check_request_tokens(tokens)
            rows = l2_normalize(np.stack(await self.batcher.submit(encoded, priority)))
            scores = rows[1:] @ rows[0]
        owner = np.asarray(owners, dtype=np.int64)
        scores = scores.astype(np.float32)
        if self.config.chunk_aggregate == "mean":
            per_passage = np.zeros(len(passages), dtype=np.float32)
            np.add.at(per_passage, owner, scores)
            per_passage /= np.bincount(owner, minlength=len(passages)).astype(np.float32)
        else:
            per_passage = np.full(len(passages), -np.inf, dtype=np.float32)
            np.maximum.at(per_passage, owner, scores)
        self.metrics.chunk_windows.inc(len(owners))
        token_counts = np.bincount(owner, weights=lengths, minlength=len(passages)).astype(np.int64)
        return RankResult(per_passage.tolist(), tokens, token_counts.tolist())

    async def _rank_by_cosine(
        self, query: str, passages: Sequence[str], truncate: Truncate, priority: Priority
    ) -> RankResult:
        """Bi-encoder ranking: the query and the passages missing from the cache form one job."""
        prefix = self.spec.passage_prefix
        keys = [text_key(p, prefix, truncate) for p in passages]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.metrics.cache_hits.inc(len(passages) - len(missing))
        self.metrics.cache_misses.inc(len(missing))

        def encode() -> list[Encoded]:
            q = self.policy.texts([query], truncate, self.spec.query_prefix, "query")
            return q + self.policy.texts([passages[i] for i in missing], truncate, prefix, "passages", missing)

        encoded = await self._in_pool(encode)
        cached_tokens = sum(f[1] for f in found if f is not None)
        self.check_request_tokens(sum(len(e) for e in encoded) + cached_tokens)
        rows = await self.batcher.submit(encoded, priority)
        for i, enc, row in zip(missing, encoded[1:], rows[1:]):
            vector, count = l2_normalize(row), len(enc)
            found[i] = (vector, count)
            self.cache.put(keys[i], vector, count)
        self.metrics.cache_size.set(len(self.cache))
        every = [f for f in found if f is not None]  # all filled now: cached or just computed
        if len(every) != len(found):  # cannot happen: each passage was cached or just computed
            raise RuntimeError("bi-encoder ranking lost a passage's vector")
        scores = np.stack([f[0] for f in every]) @ l2_normalize(rows[0])
        counts = [f[1] for f in every]
        return RankResult(scores.tolist(), len(encoded[0]) + sum(counts), counts)

    async def embed(
        self,
        texts: Sequence[str],
        input_type: InputType | None,
        truncate: Truncate = "END",
        dimensions: int | None = None,
        priority: Priority = "interactive",
    ) -> EmbedResult:
        if self.spec.kind != "embedder":
            raise InvalidRequest(f"model {self.name!r} is a reranker (cross-encoder); it does not produce embeddings")
        if self.asymmetric and input_type is None:
            raise InvalidRequest(
                "input_type is required for this asymmetric model: set it to 'query' or 'passage' "
                "(or use the model id suffixed -query / -passage)",
                param="input_type",
            )
        if dimensions is not None:
            self.check_dimensions(dimensions)
        self.batcher.check_admission(len(texts))  # refuse before tokenizing when full
        encoded = await self._in_pool(self.policy.texts, texts, truncate, self.prefix(input_type), "input")
        self.check_request_tokens(sum(len(e) for e in encoded))
        vectors = np.stack(await self.batcher.submit(encoded, priority))  # the runner already L2-normalized
        if dimensions is not None:  # Matryoshka: keep the first d components, renormalize
            vectors = l2_normalize(vectors[:, :dimensions])
        counts = [len(e) for e in encoded]
        return EmbedResult(vectors, sum(counts), counts)

    def check_dimensions(self, dimensions: int) -> None:
        allowed = self.spec.dimensions
        if allowed is not None and dimensions not in allowed:
            raise InvalidRequest(
                f"dimensions={dimensions} is not supported by {self.name}; choose one of {list(allowed)}",
                param="dimensions",
            )
        if allowed is None and not 1 <= dimensions <= self.spec.hidden_size:
            raise InvalidRequest(
                f"dimensions={dimensions} is not supported by {self.name}; choose 1..{self.spec.hidden_size}",
                param="dimensions",
            )
