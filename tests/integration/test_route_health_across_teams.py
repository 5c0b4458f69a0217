"""One team cannot open a route's breaker for every team with requests whose upstream answer we
cannot parse (an upstream that echoes the caller's input can be made to answer that): through the
real app, a real redis-server and the fake fal."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.routing.breaker import route_key
from gateway.settings import Settings
from tests.api.conftest import ADMIN, admin_headers
from tests.fakes.fal_server import create_app as create_fal_app
from tests.fakes.fal_state import FakeFal
from tests.fakes.server import serve_in_thread


@dataclass
class FalOnly:
    client: TestClient
    fal: FakeFal
    redis_url: str

    def team(self, name: str) -> str:
        team = self.client.post("/admin/teams", json={"name": name}, headers=admin_headers()).json()
        key: str = self.client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
        return key

    def generate(self, key: str) -> httpx.Response:
        return self.client.post(
            "/v1/images/generations",
            json={"model": "hidream-i1-full", "prompt": "a cat", "num_inference_steps": 2},
            headers={"Authorization": f"Bearer {key}"},
        )

    def breaker(self) -> str:
        """The shared breaker's state, as every gateway process reads it."""
        with redis.Redis.from_url(self.redis_url) as r:
            state = r.hget(route_key("fal", "hidream-i1-full") + "state", "state")
        return state.decode() if isinstance(state, bytes) else "closed"


@pytest.fixture
def fal_only(redis_url: str, tmp_path: Path, pricing_file: Path) -> Iterator[FalOnly]:
    fal_key = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}"
    fal = FakeFal(inference_s=0.01)
    with serve_in_thread(create_fal_app(fal, key=fal_key)) as fal_url:
        settings = Settings(
            redis_url=redis_url,
            admin_key=ADMIN,
            data_dir=tmp_path / "data",
            pricing_file=pricing_file,
            fal_key=fal_key,
            fal_queue_url=fal_url,
            fal_poll_initial_s=0.01,
        )
        with TestClient(create_app(settings)) as client:
            yield FalOnly(client, fal, redis_url)


def test_one_teams_unparseable_answers_do_not_shut_the_route_for_another_team(fal_only: FalOnly) -> None:
    attacker, other = fal_only.team("attacker"), fal_only.team("other")
    fal_only.fal.fail_next("garbage", count=8)  # more than the 5 failures in a row that open a breaker
    for _ in range(8):
        r = fal_only.generate(attacker)
        assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_error"), r.text
    assert fal_only.breaker() == "closed"
    r = fal_only.generate(other)
    assert (r.status_code, r.headers["x-gateway-provider"]) == (200, "fal"), r.text


def test_unparseable_answers_seen_by_two_teams_open_the_breaker(fal_only: FalOnly) -> None:
    a, b = fal_only.team("a"), fal_only.team("b")
    fal_only.fal.fail_next("garbage", count=5)
    assert fal_only.generate(a).status_code == 502  # one team's word: counts for nothing yet
    for key in (b, a, b, a):  # the fault is the route's: both teams see it
        assert fal_only.generate(key).status_code == 502
    assert fal_only.breaker() == "closed"  # 4 failures in a row counted
    fal_only.fal.fail_next("garbage")
    assert fal_only.generate(b).status_code == 502
    assert fal_only.breaker() == "open"
    r = fal_only.generate(a)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "service_unavailable")
