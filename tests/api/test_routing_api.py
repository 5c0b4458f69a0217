"""Routing through the real app: a real worker (with a stand-in pipeline) as the cheap owned GPU,
the fake fal server as the near-unlimited provider; the headers name the route and the reason."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Routed, admin_headers, metrics_headers, wait_for


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


def _busy_waits(routed: Routed) -> float:
    metrics = routed.client.get("/metrics", headers=metrics_headers()).text
    line = 'gateway_busy_waits_total{model="hidream-i1-full"} '
    return sum(float(m.split()[-1]) for m in metrics.splitlines() if m.startswith(line))


def test_when_every_route_is_full_at_once_the_request_waits_for_room_and_is_charged_once(routed: Routed) -> None:
    routed.worker.fill_queue()  # the owned GPU's queue is full (429)...
    wait_for(lambda: _probed_saturated(routed.client), "the probe to see the full queue")
    routed.fal.fail_next("rate_limited")  # ...and fal refuses its next submit (429): both full at once
    r = routed.generate()
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-charged-usd"] == "0.050000"
    assert _busy_waits(routed) == 1
    usage = routed.client.get("/v1/usage", headers={"Authorization": f"Bearer {routed.key}"}).json()
    assert usage["spent_usd"] == 0.05 and usage["requests"] == 1
    routed.worker.pipeline.release.set()
    routed.worker.join_fillers()


@pytest.mark.parametrize("routed", [{"request_deadline_s": 0.5}], indirect=True)
def test_a_full_route_that_needs_longer_than_the_deadline_leaves_is_not_waited_for(routed: Routed) -> None:
    routed.worker.fill_queue()
    wait_for(lambda: _probed_saturated(routed.client), "the probe to see the full queue")
    routed.fal.fail_next("rate_limited")
    r = routed.generate()  # the worker asks for at least a second: more than the request has
    assert r.status_code == 503 and "busy" in r.json()["error"]["message"]
    assert r.headers["retry-after"]
    assert _busy_waits(routed) == 0
    routed.worker.pipeline.release.set()
    routed.worker.join_fillers()
