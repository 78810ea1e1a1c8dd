"""Prometheus metrics: one registry per app and one per model engine, merged when scraped.

The API layer counts requests, errors, latency and rejections in the app's ``Metrics``; each
engine reports queue depth, batch sizes, tokens and its passage cache in its own ``Metrics``, and
``render`` labels those series ``model="<served name>"``, so several models in one process (and
several apps in one test process) never share a series. Nothing here knows about HTTP or models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "rankserve_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "rankserve_request_errors", "HTTP error responses by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "rankserve_request_latency_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("rankserve_queue_depth", "Pairs/texts waiting for the model", registry=r)
        self.batch_size = Histogram(
            "rankserve_batch_size", "Sequences per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "rankserve_batch_padded_tokens",
            "Padded tokens per forward pass",
            buckets=tuple(2**i for i in range(6, 18)),
            registry=r,
        )
        self.tokens = Counter("rankserve_tokens", "Real tokens processed by the model", registry=r)
        self.forward_seconds = Histogram(
            "rankserve_forward_seconds", "Model forward time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.cache_hits = Counter(
            "rankserve_passage_cache_hits", "Passage embeddings served from the cache", registry=r
        )
        self.cache_misses = Counter("rankserve_passage_cache_misses", "Passage embeddings computed", registry=r)
        self.cache_size = Gauge("rankserve_passage_cache_entries", "Passage embeddings held in the cache", registry=r)
        self.cache_capacity = Gauge("rankserve_passage_cache_capacity", "Passage cache size bound", registry=r)
        # Reliability: why requests were refused, how long admitted work waited, how full batches ran.
        self.rejections = Counter(
            "rankserve_rejections", "Error responses by reason (the error body's type)", ["reason"], registry=r
        )
        self.queue_tokens = Gauge("rankserve_queue_tokens", "Tokens waiting for the model", registry=r)
        self.queue_wait = Histogram(
            "rankserve_queue_wait_seconds",
            "Time an item waited before its forward pass",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_fill = Histogram(
            "rankserve_batch_fill",
            "Real tokens / padded tokens per forward pass",
            buckets=(0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=r,
        )
        self.chunk_windows = Counter(
            "rankserve_chunk_windows", "Windows scored for truncate CHUNK (long passages split)", registry=r
        )
        self.runtime = Gauge(
            "rankserve_runtime_info",
            "How the model runs: 1 on the series naming the device, backend, precision and CPU GEMM in use",
            ["device", "backend", "precision", "cpu_gemm"],
            registry=r,
        )
        self.express_passes = Counter(
            "rankserve_express_passes",
            "Forward passes of small interactive jobs run beside a pass already in the model (the express lane)",
            registry=r,
        )
        self.worker_restarts = Counter(
            "rankserve_worker_restarts", "Model worker loop restarts after a crash", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


# The families the API layer fills (the app's Metrics); every other family is an engine's.
HTTP_FAMILIES = frozenset(
    {"rankserve_requests", "rankserve_request_errors", "rankserve_request_latency_seconds", "rankserve_rejections"}
)


class _Merged:
    """A registry-like view for ``generate_latest``: the app's HTTP families plus each engine's
    families with a ``model`` label, one family per name (Prometheus wants a name's series together)."""

    def __init__(self, app: Metrics, engines: Mapping[str, Metrics]):
        self.app, self.engines = app, engines

    def collect(self) -> Iterator[Metric]:
        yield from (f for f in self.app.registry.collect() if f.name in HTTP_FAMILIES)
        merged: dict[str, Metric] = {}
        for model, metrics in self.engines.items():
            for family in metrics.registry.collect():
                if family.name in HTTP_FAMILIES:
                    continue
                out = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                for s in family.samples:
                    out.add_sample(s.name, {"model": model, **s.labels}, s.value, s.timestamp, s.exemplar)
        yield from merged.values()


def render(app: Metrics, engines: Mapping[str, Metrics]) -> bytes:
    """The scrape body: HTTP metrics once, engine metrics per model (``model`` label)."""
    return generate_latest(_Merged(app, engines))
