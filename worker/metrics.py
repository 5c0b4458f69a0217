"""The worker's Prometheus metrics, in its own registry (vLLM-style names: running/waiting gauges
that routers read as "TotalQueuedRequests", latency histograms, outcome counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STATUSES = ("ok", "invalid", "rejected", "not_ready", "cancelled", "error")
# Seconds: from ~50 ms (tiny/fast jobs) to several minutes (Full, n=4, behind a queue).
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 240, 480)


class WorkerMetrics:
    def __init__(self, running: Callable[[], float], waiting: Callable[[], float], loaded: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("hidream_num_requests_running", "Jobs on the device now.", registry=r).set_function(running)
        Gauge("hidream_num_requests_waiting", "Jobs admitted and waiting in the queue.", registry=r).set_function(
            waiting
        )
        Gauge("hidream_model_loaded", "1 once the pipeline is loaded and warmed.", registry=r).set_function(loaded)
        self.request_duration = Histogram(
            "hidream_request_duration_seconds", "Admitted requests, arrival to response.", buckets=_BUCKETS, registry=r
        )
        self.queue_duration = Histogram(
            "hidream_queue_duration_seconds", "Time a job waited before it started.", buckets=_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "hidream_inference_duration_seconds", "Time a job ran on the pipeline.", buckets=_BUCKETS, registry=r
        )
        self.requests = Counter(
            "hidream_requests",
            "Generation requests by outcome: ok, invalid, rejected (queue full), not_ready, cancelled, error.",
            ["status"],
            registry=r,
        )
        for status in STATUSES:  # present from the start, so rate() sees the first one
            self.requests.labels(status)
        self.images = Counter("hidream_images_generated", "Images returned to clients.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
