"""`gateway serve`'s workers set what their app built at startup aside from Python's cycle
collector (gateway/collector.py); an app that shares its process (as here) does not, unless asked.
Every app times the collector's pauses into /metrics while it runs."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram

from gateway.app import create_app
from gateway.collector import PauseWatch
from gateway.settings import Settings
from tests.api.conftest import metrics_headers

NO_UPSTREAMS = {"fal": lambda s: None, "local_gpu": lambda s: None}


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # what a test froze goes back to the collector


def _collected(obj: object) -> bool:
    """Whether the collector walks `obj` (gc.get_objects leaves out the permanent generation)."""
    return any(o is obj for o in gc.get_objects())


def test_a_served_app_sets_its_startup_objects_aside(settings: Settings, unfrozen: None) -> None:
    with TestClient(create_app(settings, registry=NO_UPSTREAMS, freeze_startup=True)) as client:
        state = client.app.state.gateway  # type: ignore[attr-defined]
        assert gc.get_freeze_count() > 10_000  # the app and all it imported
        assert gc.is_tracked(state) and not _collected(state)
        # what a request makes later is collected as before
        later = [client.get("/health").status_code]  # a list: tracked whatever it holds
        assert gc.is_tracked(later) and _collected(later)


def test_an_app_sharing_its_process_leaves_the_collector_as_it_was(settings: Settings, unfrozen: None) -> None:
    with TestClient(create_app(settings, registry=NO_UPSTREAMS)) as client:
        state = client.app.state.gateway  # type: ignore[attr-defined]
        assert gc.get_freeze_count() == 0
        assert _collected(state)


def test_gateway_serve_freezes_by_default() -> None:
    assert Settings.model_fields["gc_freeze_startup"].default is True


def _pauses(client: TestClient, generation: int) -> float:
    text = client.get("/metrics", headers=metrics_headers()).text
    line = f'gateway_gc_pause_seconds_count{{generation="{generation}"}} '
    return next(float(x[len(line) :]) for x in text.splitlines() if x.startswith(line))


def test_the_collectors_pauses_are_timed_while_the_app_runs(settings: Settings) -> None:
    callbacks = list(gc.callbacks)
    with TestClient(create_app(settings, registry=NO_UPSTREAMS)) as client:
        before = [_pauses(client, g) for g in range(3)]
        gc.collect()  # a full collection
        gc.collect(0)
        deadline = time.monotonic() + 10  # the app puts noted pauses in the histogram every second
        while (after := [_pauses(client, g) for g in range(3)])[2] < before[2] + 1 or after[0] < before[0] + 1:
            assert time.monotonic() < deadline, (before, after)
            time.sleep(0.1)
        text = client.get("/metrics", headers=metrics_headers()).text
        assert 'gateway_gc_pause_seconds_sum{generation="2"}' in text
    assert gc.callbacks == callbacks  # stopped with the app: none left behind in a shared process


def test_a_collection_inside_a_metrics_write_does_not_deadlock() -> None:
    """A collection can start inside prometheus_client while it holds a value's lock (one lock for the
    process in multiprocess mode). Observing the pause from the callback took that lock again, and
    the thread waited on itself for ever (a served worker hung so). Here the lock is held as
    prometheus_client holds it, and a collection starts under it, on a thread of its own so that a
    deadlock fails the test instead of hanging it."""
    registry = CollectorRegistry()
    pauses = Histogram("pauses", "test", ["generation"], registry=registry)
    watch = PauseWatch(pauses)
    held = pauses.labels("0")._sum._lock  # type: ignore[attr-defined]  # what observe() takes
    done = threading.Event()

    def collect_under_the_lock() -> None:
        with held:
            gc.collect(0)  # the callback runs here, on this thread, the lock held
        done.set()

    watch.start()
    try:
        thread = threading.Thread(target=collect_under_the_lock, daemon=True)
        thread.start()
        assert done.wait(10), "the collector's callback deadlocked on the metric's lock"
    finally:
        watch.stop()  # observes what was noted, the lock free again
    assert (registry.get_sample_value("pauses_count", {"generation": "0"}) or 0) >= 1
