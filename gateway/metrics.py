"""Prometheus metrics, on a registry built per app (no global registry). Labels come from a closed
set: team id, model, provider, status, error kind, route reason; never a key, prompt or request id.

With several worker processes, prometheus-client's multiprocess mode keeps each process's values
in files under PROMETHEUS_MULTIPROC_DIR (set by `gateway serve` before the workers start), and a
scrape of any worker sums them all.
"""

from __future__ import annotations

from bisect import bisect_left
from pathlib import Path
from typing import Any, Self

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector


class _KeepsChildren(MetricWrapperBase):
    """prometheus-client's `labels()` converts every value to text and takes a lock to find the
    child: about 4.4 us a call, and a request makes nine (4-5 % of its CPU). These metrics keep
    their children by the values as given, so a repeat costs one dict lookup. Nothing removes a
    child from them; `remove` and `clear` forget the kept ones all the same."""

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Self:
        if labelkwargs or not labelvalues:
            return super().labels(*labelvalues, **labelkwargs)
        kept: dict[tuple[object, ...], Self] = self.__dict__.setdefault("_kept", {})
        child = kept.get(labelvalues)
        if child is None:
            child = kept[labelvalues] = super().labels(*labelvalues)
        return child

    def remove(self, *labelvalues: Any) -> None:
        self.__dict__.pop("_kept", None)
        super().remove(*labelvalues)

    def clear(self) -> None:
        self.__dict__.pop("_kept", None)
        super().clear()


# A labelled child, or a metric without labels, is always observable: prometheus-client checks it
# on every inc/observe through two method calls, and a request makes about ten (each of these
# fast paths does what the library's own method does, less that check).


class Counter(_KeepsChildren, prometheus_client.Counter):
    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or (self._labelnames and not self._labelvalues):
            super().inc(amount, exemplar)  # an exemplar, or a parent (which raises)
            return
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._value.inc(amount)


class Gauge(_KeepsChildren, prometheus_client.Gauge):
    def inc(self, amount: float = 1) -> None:
        if self._is_most_recent or (self._labelnames and not self._labelvalues):
            super().inc(amount)  # raises
            return
        self._value.inc(amount)

    def dec(self, amount: float = 1) -> None:
        if self._is_most_recent or (self._labelnames and not self._labelvalues):
            super().dec(amount)  # raises
            return
        self._value.inc(-amount)


class Histogram(_KeepsChildren, prometheus_client.Histogram):
    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or (self._labelnames and not self._labelvalues) or amount != amount:
            super().observe(amount, exemplar)  # an exemplar, a parent (which raises), or NaN
            return
        self._sum.inc(amount)
        # The first bucket whose bound is at least the amount (the last bound is +Inf).
        self._buckets[bisect_left(self._upper_bounds, amount)].inc(1)


LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Image requests settled", ["team", "model", "provider", "status"], registry=r
        )
        self.images = Counter("gateway_images", "Images served", ["team", "model", "provider"], registry=r)
        self.spend = Counter(
            "gateway_spend_usd", "Amount billed to teams (USD)", ["team", "model", "provider"], registry=r
        )
        self.provider_cost = Counter(
            "gateway_provider_cost_usd",
            "What providers cost the organisation (USD)",
            ["team", "model", "provider"],
            registry=r,
        )
        self.wasted_cost = Counter(
            "gateway_wasted_provider_cost_usd",
            "What providers cost for images no caller got: the finished parts of a fanned-out request "
            "that failed as a whole (USD)",
            ["model", "provider"],
            registry=r,
        )
        self.rejections = Counter(
            "gateway_rejections", "Requests refused before any provider call", ["team", "kind"], registry=r
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failed provider attempts", ["provider", "model", "kind"], registry=r
        )
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Attempts moved to the next route after a failure",
            ["model", "from_provider"],
            registry=r,
        )
        self.busy_waits = Counter(
            "gateway_busy_waits",
            "Waits for room, within the request's deadline, after every route tried said it was full",
            ["model"],
            registry=r,
        )
        self.routed = Counter(
            "gateway_route_decisions", "Routing decisions by reason", ["model", "provider", "reason"], registry=r
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from admission to response",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time of one provider attempt",
            ["provider", "model", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself (request time minus provider time)",
            ["model"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.gc_pause = Histogram(
            "gateway_gc_pause_seconds",
            "Pauses of Python's cycle collector by generation (2: a full collection); the process's event loop "
            "stops meanwhile",
            ["generation"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Admitted requests not yet settled",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.decodes_waiting = Gauge(
            "gateway_upload_decodes_waiting",
            "Uploaded images of admitted edits waiting for decode memory (GATEWAY_UPLOAD_DECODE_BUDGET_BYTES)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.pricing_reloads = Counter(
            "gateway_pricing_reloads",
            "pricing.yaml changes seen while running, by result (loaded, or rejected and the old catalog kept); "
            "each process counts its own",
            ["result"],
            registry=r,
        )
        self.redis_errors = Counter("gateway_redis_errors", "Redis calls that failed", ["operation"], registry=r)
        self.store_errors = Counter(
            "gateway_store_errors",
            "Failed calls to a store (images, ledger_archive) by operation and kind: denied (credentials or "
            "rights refused), full (a local disk out of space, or below its minimum free), failed (anything else)",
            ["store", "operation", "kind"],
            registry=r,
        )
        self.ledger_archived_days = Counter(
            "gateway_ledger_archived_days",
            "Days of a team's ledger exported to the archive, checked, and trimmed from Redis",
            registry=r,
        )
        self.ledger_archived_events = Counter(
            "gateway_ledger_archived_events", "Ledger events moved from Redis to the archive", registry=r
        )
        self.ledger_archive_failures = Counter(
            "gateway_ledger_archive_failures",
            "Ledger archive rounds stopped for a team, by stage: verify (the day does not add up to Redis's "
            "aggregates or to what was committed), store, redis, other; the day stays in Redis",
            ["stage"],
            registry=r,
        )
        self.shed = Counter(
            "gateway_shed", "Image requests refused by load shedding, before any other work", ["reason"], registry=r
        )
        self.route_healthy = Gauge(
            "gateway_route_healthy",
            "1 when the route's free probe answered healthy",
            ["provider", "model"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.breaker_state = Gauge(
            "gateway_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["provider", "model"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_worker_queue_depth",
            "Jobs waiting on the route's workers (from /ready)",
            ["provider", "model"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.expected_wait = Gauge(
            "gateway_route_expected_wait_seconds",
            "Queue wait the route reports for a new job",
            ["provider", "model"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged)
