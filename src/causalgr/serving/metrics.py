"""The server's Prometheus metrics: requests by route and status, latency, time in the ranker, the history cache."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from causalgr.serving.ranker import Ranker

# Seconds; a CPU request with a short history and a few candidates lands in the low buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """One registry per app, so two apps in a process (tests) never share counts."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, ranker: Ranker):
        self.registry = CollectorRegistry()
        self.requests = Counter("causalgr_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("causalgr_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ranker_latency = Histogram(
            "causalgr_ranker_seconds", "time in the Ranker per request (its checks, the model, the cache) by route; "
            "the rest of causalgr_request_seconds is HTTP, JSON and the hop to the worker thread", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        Gauge("causalgr_cache_bytes", "bytes held by the per-user history cache",
              registry=self.registry).set_function(lambda: ranker.cache.nbytes)
        Gauge("causalgr_cache_users", "users in the per-user history cache",
              registry=self.registry).set_function(lambda: len(ranker.cache))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def timed(self, route: str, call: Callable) -> Callable:
        """`call`, its seconds observed in `causalgr_ranker_seconds` under `route` (raised or not)."""
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.ranker_latency.labels(route=route).observe(time.perf_counter() - start)
        return timed_call

    def render(self) -> bytes:
        return generate_latest(self.registry)
