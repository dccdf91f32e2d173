"""Prometheus metrics of one server (prometheus_client, in a registry of its own so that two apps in one process,
as in the tests, do not share counters)."""
from __future__ import annotations

from typing import Any

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("toolkit_requests", "requests answered, by path and HTTP status",
                                ["path", "status"], registry=self.registry)
        self.timeouts = Counter("toolkit_timeouts", "requests that timed out (answered 503)", ["path"],
                                registry=self.registry)
        self.latency = Histogram("toolkit_request_seconds", "time from a request's parsed body to its answer",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("toolkit_batch_size", "inputs per model call (dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("toolkit_batch_seconds", "model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=self.registry)
        self.decode_seconds = Histogram("toolkit_decode_step_seconds", "time of one decode step (generation)",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)

    def request(self, path: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(path=path, status=str(status)).inc()
        if seconds is not None:
            self.latency.labels(path=path).observe(seconds)

    def timeout(self, path: str) -> None:
        self.timeouts.labels(path=path).inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def decode_step(self, seconds: float) -> None:
        self.decode_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def snapshot(self) -> dict[str, Any]:
        """Totals for the load benchmark: batches, inputs batched."""
        count = total = 0.0
        for metric in self.batch_size.collect():
            for s in metric.samples:
                if s.name.endswith("_count"):
                    count = s.value
                elif s.name.endswith("_sum"):
                    total = s.value
        return {"batches": int(count), "batched_inputs": int(total)}
