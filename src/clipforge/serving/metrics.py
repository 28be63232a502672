"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""
from __future__ import annotations

import time

from clipforge.serving._deps import import_serving


class Metrics:
    def __init__(self):
        prometheus = import_serving("prometheus_client")
        self.registry = prometheus.CollectorRegistry()
        self.content_type = prometheus.CONTENT_TYPE_LATEST
        self._generate = prometheus.generate_latest
        self.requests = prometheus.Counter("clipforge_requests", "HTTP requests by route and status",
                                           ["route", "status"], registry=self.registry)
        self.latency = prometheus.Histogram(
            "clipforge_request_seconds", "request latency by route", ["route"], registry=self.registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 10, 30))
        self.batch_size = prometheus.Histogram("clipforge_batch_size", "inputs encoded together", ["kind"],
                                               registry=self.registry,
                                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = prometheus.Histogram(
            "clipforge_batch_seconds", "model time per batch", ["kind"], registry=self.registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.inputs = prometheus.Counter("clipforge_inputs", "inputs encoded", ["kind"], registry=self.registry)
        self.queue_depth = prometheus.Gauge("clipforge_queue_depth", "inputs waiting for a batch",
                                            registry=self.registry)
        self.rejected = prometheus.Counter("clipforge_rejected", "requests refused because the queue was full",
                                           registry=self.registry)

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)
        self.inputs.labels(kind).inc(size)

    def observe_request(self, route: str, status: int, start: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - start)

    def render(self, queue_depth: int) -> bytes:
        self.queue_depth.set(queue_depth)
        return self._generate(self.registry)
