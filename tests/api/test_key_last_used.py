"""Keys' `last_used` in the admin API and GET /v1/team: a request shows there within about a second
of the first use, and further requests within GATEWAY_KEY_LAST_USED_S write nothing more."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import admin_headers, wait_for


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    settings = settings.model_copy(update={"key_last_used_s": 3600.0})
    app = create_app(settings, registry={"fal": lambda s: None, "local_gpu": lambda s: None})
    with TestClient(app) as made:
        yield made


def _keys(client: TestClient, team_id: str) -> list[dict[str, object]]:
    r = client.get(f"/admin/teams/{team_id}/keys", headers=admin_headers())
    assert r.status_code == 200
    return r.json()["data"]  # type: ignore[no-any-return]


def test_a_request_sets_last_used_and_more_within_the_interval_write_nothing(
    client: TestClient, redis_url: str
) -> None:
    team = client.post("/admin/teams", json={"name": "t"}, headers=admin_headers()).json()
    path = f"/admin/teams/{team['id']}/keys"
    used = client.post(path, json={"name": "used"}, headers=admin_headers()).json()
    assert client.post(path, json={"name": "idle"}, headers=admin_headers()).status_code == 201
    assert used["last_used"] is None and all(k["last_used"] is None for k in _keys(client, team["id"]))

    before = int(time.time())
    headers = {"Authorization": f"Bearer {used['key']}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    wait_for(lambda: any(k["last_used"] is not None for k in _keys(client, team["id"])), "the use to be flushed")
    by_name = {k["name"]: k["last_used"] for k in _keys(client, team["id"])}
    assert by_name["idle"] is None
    assert isinstance(by_name["used"], int) and before <= by_name["used"] <= int(time.time())
    own = client.get("/v1/team", headers=headers).json()
    assert {k["name"]: k["last_used"] for k in own["keys"]} == by_name

    # Within the interval nothing is written: a marker put in its place stays, flush as it may.
    with redis.Redis.from_url(redis_url) as r:
        r.hset(f"gw:keyid:{used['id']}", "last_used", 1)
        for _ in range(5):
            assert client.get("/v1/models", headers=headers).status_code == 200
        last_use = client.app.state.gateway.keys.last_use  # type: ignore[attr-defined]
        assert client.portal is not None
        assert client.portal.call(last_use.flush) == 0
        assert r.hget(f"gw:keyid:{used['id']}", "last_used") == b"1"
