"""`gateway serve`'s workers set what their app built at startup aside from Python's cycle
collector (gateway/collector.py); an app that shares its process (as here) does not, unless asked.
Every app times the collector's pauses into /metrics while it runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
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
        after = [_pauses(client, g) for g in range(3)]
        assert after[2] >= before[2] + 1 and after[0] >= before[0] + 1
        text = client.get("/metrics", headers=metrics_headers()).text
        assert 'gateway_gc_pause_seconds_sum{generation="2"}' in text
    assert gc.callbacks == callbacks  # stopped with the app: none left behind in a shared process
