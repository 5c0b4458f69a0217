"""Routing through the real app: a real worker (with a stand-in pipeline) as the cheap owned GPU,
the fake fal server as the near-unlimited provider; the headers name the route and the reason."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import ADMIN, METRICS, admin_headers, metrics_headers
from tests.fakes.fal_server import create_app as create_fal_app
from tests.fakes.fal_state import FakeFal
from tests.fakes.server import serve_in_thread
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import RunningWorker, running_worker


@dataclass
class Routed:
    client: TestClient
    worker: RunningWorker
    fal: FakeFal
    key: str
    team_id: str

    def generate(self, headers: dict[str, str] | None = None, **body: object) -> httpx.Response:
        return self.client.post(
            "/v1/images/generations",
            json={"model": "hidream-i1-full", "prompt": "route me", "num_inference_steps": 2, **body},
            headers={"Authorization": f"Bearer {self.key}", **(headers or {})},
        )


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def routed(redis_url: str, tmp_path: Path, pricing_file: Path) -> Iterator[Routed]:
    fal_key = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}"
    fal_state = FakeFal(inference_s=0.05)
    with (
        running_worker("full", max_queue=1, pipeline=StandInPipeline(step_s=0.01)) as worker,
        serve_in_thread(create_fal_app(fal_state, key=fal_key)) as fal_url,
    ):
        settings = Settings(
            redis_url=redis_url,
            admin_key=ADMIN,
            metrics_token=METRICS,
            data_dir=tmp_path / "data",
            pricing_file=pricing_file,
            fal_key=fal_key,
            fal_queue_url=fal_url,
            fal_poll_initial_s=0.02,
            local_gpu_urls=[worker.url],
            probe_interval_s=0.05,
        )
        with TestClient(create_app(settings)) as client:
            team = client.post(
                "/admin/teams", json={"name": "r", "allow_provider_pinning": True}, headers=admin_headers()
            ).json()
            key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
            yield Routed(client, worker, fal_state, key, team["id"])
        worker.pipeline.release.set()
        worker.join_fillers()


def test_owned_gpu_serves_first_and_the_headers_say_why(routed: Routed) -> None:
    r = routed.generate()
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-provider"] == "local_gpu"
    assert r.headers["x-gateway-route-reason"] == "cheapest_healthy"
    assert routed.worker.jobs_started() >= 1


def test_spill_over_when_the_worker_queue_fills_and_drain_back_when_it_empties(routed: Routed) -> None:
    routed.worker.fill_queue()
    wait_for(lambda: _probed_saturated(routed.client), "the probe to see the full queue")
    r = routed.generate()
    assert r.status_code == 200, r.text
    assert (r.headers["x-gateway-provider"], r.headers["x-gateway-route-reason"]) == ("fal", "spillover_queue_full")

    routed.worker.pipeline.release.set()
    routed.worker.join_fillers()
    wait_for(lambda: not _probed_saturated(routed.client), "the queue to drain")
    r = routed.generate()
    assert (r.headers["x-gateway-provider"], r.headers["x-gateway-route-reason"]) == ("local_gpu", "cheapest_healthy")


def _probed_saturated(client: TestClient) -> bool:
    health = client.app.state.gateway.health.current()  # type: ignore[attr-defined]
    probe = health.get(("hidream-i1-full", "local_gpu"))
    return bool(probe is not None and probe.saturated)


def test_fallback_when_the_provider_fails_mid_request_is_charged_once(routed: Routed) -> None:
    routed.worker.pipeline.plan("fail")
    r = routed.generate()
    assert r.status_code == 200, r.text
    assert (r.headers["x-gateway-provider"], r.headers["x-gateway-route-reason"]) == ("fal", "fallback_after_error")
    assert r.headers["x-gateway-charged-usd"] == "0.050000"
    usage = routed.client.get("/v1/usage", headers={"Authorization": f"Bearer {routed.key}"}).json()
    assert usage["spent_usd"] == 0.05 and usage["requests"] == 1


def test_breaker_opens_after_repeated_failures_and_traffic_moves_without_touching_the_worker(
    routed: Routed,
) -> None:
    routed.worker.pipeline.plan("fail", count=5)
    for _ in range(5):
        assert routed.generate().headers["x-gateway-route-reason"] == "fallback_after_error"
    started = routed.worker.jobs_started()
    r = routed.generate()
    assert (r.headers["x-gateway-provider"], r.headers["x-gateway-route-reason"]) == ("fal", "failover_unhealthy")
    assert routed.worker.jobs_started() == started
    metrics = routed.client.get("/metrics", headers=metrics_headers()).text
    assert (
        'gateway_route_decisions_total{model="hidream-i1-full",provider="fal",reason="failover_unhealthy"}' in metrics
    )


def test_pinned_provider_where_the_team_may_pin(routed: Routed) -> None:
    r = routed.generate(headers={"x-gateway-provider": "fal"})
    assert (r.headers["x-gateway-provider"], r.headers["x-gateway-route-reason"]) == ("fal", "pinned")
    r = routed.generate(headers={"x-gateway-provider": "nowhere"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-gateway-provider"
    routed.client.patch(
        f"/admin/teams/{routed.team_id}", json={"allow_provider_pinning": False}, headers=admin_headers()
    )
    r = routed.generate(headers={"x-gateway-provider": "fal"})
    assert r.status_code == 403 and r.json()["error"]["param"] == "x-gateway-provider"


def test_policy_and_latency_target_headers_are_validated(routed: Routed) -> None:
    r = routed.generate(headers={"x-gateway-routing-policy": "random"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-gateway-routing-policy"
    r = routed.generate(headers={"x-gateway-latency-target-s": "soon"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-gateway-latency-target-s"
    r = routed.generate(headers={"x-gateway-routing-policy": "fastest"})
    assert r.status_code == 200 and r.headers["x-gateway-route-reason"] in ("fastest_healthy", "cheapest_healthy")
