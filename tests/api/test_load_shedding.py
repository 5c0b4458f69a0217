"""Past capacity the gateway refuses new image requests at once, in OpenAI's shape with retry-after,
before authentication, admission or any provider call: nothing is reserved or charged."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from gateway.accounting.keys import team_prefix
from gateway.api.state import AppState
from tests.api.conftest import admin_headers


def _team_and_key(client: TestClient) -> tuple[str, str]:
    team = client.post("/admin/teams", json={"name": "shed"}, headers=admin_headers()).json()
    key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    return team["id"], key


def test_a_process_at_its_in_flight_limit_sheds_with_503_and_retry_after(bare_client: TestClient) -> None:
    state: AppState = bare_client.app.state.gateway  # type: ignore[attr-defined]
    team_id, key = _team_and_key(bare_client)
    body = {"model": "hidream-i1-full", "prompt": "x"}
    auth = {"Authorization": f"Bearer {key}"}
    state.shedder.in_flight = state.shedder.max_in_flight  # as if that many were being served
    try:
        shed = bare_client.post("/v1/images/generations", json=body, headers=auth)
        edit = bare_client.post(
            "/v1/images/edits", files={"image": ("a.png", b"x", "image/png")}, data=body, headers=auth
        )
    finally:
        state.shedder.in_flight = 0
    for r in (shed, edit):
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded" and r.headers["x-request-id"].startswith("req_")
    shed_count = state.metrics.registry.get_sample_value("gateway_shed_total", {"reason": "in_flight"})
    assert shed_count == 2
    # Below the limit the same request goes through the pipeline (and fails there: no provider here).
    r = bare_client.post("/v1/images/generations", json=body, headers=auth)
    assert r.status_code == 503 and r.json()["error"]["code"] != "overloaded"
    # Nothing was reserved or charged for the shed requests.
    r_ = redis.Redis.from_url(state.settings.redis_url or "")
    try:
        assert r_.xlen(team_prefix(team_id) + "ledger") <= 1  # only the one that reached admission
        statuses = {f[b"status"] for _, f in r_.xrange(team_prefix(team_id) + "ledger")}
        assert statuses <= {b"failed"}
    finally:
        r_.close()


def test_shedding_happens_before_authentication(bare_client: TestClient) -> None:
    state: AppState = bare_client.app.state.gateway  # type: ignore[attr-defined]
    state.shedder.in_flight = state.shedder.max_in_flight
    try:
        r = bare_client.post("/v1/images/generations", json={"model": "hidream-i1-full", "prompt": "x"})
    finally:
        state.shedder.in_flight = 0
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
