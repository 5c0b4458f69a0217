"""GET /admin/routes: each route's live health for the admin page (the probe with its queue wait,
the shared breaker, observed latency), admin only; a route nothing is set up to serve says so
instead of posing as a failure."""

from __future__ import annotations

import time

import redis
from fastapi.testclient import TestClient

from gateway.routing.breaker import route_key
from tests.api.conftest import Routed, admin_headers, metrics_headers, wait_for


def _board(client: TestClient) -> dict[tuple[str, str], dict[str, object]]:
    r = client.get("/admin/routes", headers=admin_headers())
    assert r.status_code == 200, r.text
    return {(row["model"], row["provider"]): row for row in r.json()["data"]}


def test_only_the_admin_key_reads_it(routed: Routed) -> None:
    for headers in ({}, {"Authorization": f"Bearer {routed.key}"}, metrics_headers(), {"Authorization": "Bearer x"}):
        r = routed.client.get("/admin/routes", headers=headers)
        assert r.status_code == 401, headers
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert "routes" not in r.text and "local_gpu" not in r.text


def test_each_route_with_its_probe_breaker_and_latency(routed: Routed, redis_url: str) -> None:
    for _ in range(3):
        assert routed.generate(model="local_gpu/hidream-i1-full").status_code == 200
    # The latency figures are flushed by the route health's background writer: a moment later.
    wait_for(
        lambda: (_board(routed.client)[("hidream-i1-full", "local_gpu")]["latency"] or {}).get("samples") == 3,
        "the three outcomes to be recorded",
    )
    board = _board(routed.client)
    assert set(board) == {(m, p) for m in ("hidream-i1-full", "hidream-i1-dev", "hidream-i1-fast")
                          for p in ("local_gpu", "fal")}  # fmt: skip
    gpu = board[("hidream-i1-full", "local_gpu")]
    assert (gpu["status"], gpu["healthy"]) == ("healthy", True)
    assert gpu["detail"].startswith("1/1 workers for hidream-i1-full ready")  # type: ignore[union-attr]
    assert gpu["queue_depth"] == 0 and isinstance(gpu["expected_wait_s"], float)
    assert gpu["breaker"] == {"state": "closed", "opened_at": None}
    latency = gpu["latency"]
    assert isinstance(latency, dict) and latency["p95_s"] > 0 and latency["ewma_s"] > 0
    fal = board[("hidream-i1-full", "fal")]
    assert (fal["status"], fal["latency"]) == ("healthy", {"ewma_s": None, "p95_s": None, "samples": 0})

    # The worker runs the full variant only: the others' GPU routes are not configured, not failing.
    for model in ("hidream-i1-dev", "hidream-i1-fast"):
        row = board[(model, "local_gpu")]
        assert (row["status"], row["healthy"]) == ("not_configured", False)
        assert row["detail"] == f"no worker configured for {model} (the workers run hidream-i1-full)"
        assert board[(model, "fal")]["status"] == "healthy"

    # A breaker opened (by any process: it is shared in Redis) shows, with when.
    opened_ms = int(time.time() * 1000)
    # The board is read fresh, not from the per-process cache the request path answers from: the
    # first look after another process wrote shows it.
    with redis.Redis.from_url(redis_url) as r:
        r.hset(route_key("fal", "hidream-i1-dev") + "state", mapping={"state": "open", "opened_ms": opened_ms})
        r.rpush(route_key("fal", "hidream-i1-dev") + "latency", 12_000, 14_000)
    row = _board(routed.client)[("hidream-i1-dev", "fal")]
    assert row["breaker"] == {"state": "open", "opened_at": opened_ms / 1000}
    assert (row["latency"] or {}).get("samples") == 2


def test_routes_of_a_provider_not_configured_here_say_so(bare_client: TestClient) -> None:
    board = _board(bare_client)
    assert len(board) == 6
    for (model, provider), row in board.items():
        assert row == {
            "model": model, "provider": provider, "status": "not_configured", "healthy": False,
            "detail": f"the provider {provider} is not configured on this gateway", "queue_depth": None,
            "expected_wait_s": None, "service_s": None, "breaker": None, "latency": None,
        }  # fmt: skip
