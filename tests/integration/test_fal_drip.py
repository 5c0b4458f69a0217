"""Fault matrix: fal answering with a slow drip. The result's status line and headers come at once,
then its body a byte every half second: no read ever waits long enough to time out, so only the
request's deadline bounds it. Callers get an OpenAI-shaped 504 at the deadline, charged nothing;
the dripping connections are closed, no reservation is left; once fal answers normally again,
requests are served and charged once each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.accounting.keys import team_prefix
from tests.integration.gateway_stack import Stack, running_stack
from tests.redis_server import running_redis

pytestmark = pytest.mark.slow

PRICE = 50_000  # hidream-i1-full, micro-USD per image
DEADLINE_S = 4
DRIPS = 3
LIMITS = {"requests_per_minute": 10_000, "images_per_minute": 10_000, "max_in_flight": 1000}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    env = {"GATEWAY_REQUEST_DEADLINE_S": str(DEADLINE_S), "GATEWAY_BREAKER_COOLDOWN_S": "1"}
    with (
        running_redis(tmp_path / "redis") as server,
        running_stack(server, tmp_path, team={"limits": LIMITS}, gateway_env=env) as made,
    ):
        yield made


async def _requests(stack: Stack, count: int) -> list[tuple[int, str, dict[str, object]]]:
    async def one(i: int, client: httpx.AsyncClient) -> tuple[int, str, dict[str, object]]:
        r = await client.post(
            "/v1/images/generations",
            json={"model": "hidream-i1-full", "prompt": f"drip {i}", "response_format": "b64_json"},
        )
        return r.status_code, r.headers["x-request-id"], r.json()

    headers = {"Authorization": f"Bearer {stack.key}"}
    # The client's own timeout is ten deadlines: a gateway that did not bound the drip fails here.
    async with httpx.AsyncClient(base_url=stack.base, headers=headers, timeout=DEADLINE_S * 10) as client:
        return list(await asyncio.gather(*(one(i, client) for i in range(count))))


def _fal_stats(stack: Stack) -> dict[str, int]:
    stats = httpx.get(stack.fal + "/_fake/stats").json()
    return {k: v for k, v in stats.items() if isinstance(v, int)}


def test_a_dripping_fal_result_is_cut_at_the_deadline_and_charged_nothing(stack: Stack) -> None:
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "drip", "count": DRIPS}).raise_for_status()
    dripped = asyncio.run(_requests(stack, DRIPS))
    assert _fal_stats(stack)["drips"] == DRIPS  # every request's result did drip
    for status, _, body in dripped:
        assert status == 504, (status, body)
        error = body["error"]
        assert isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)
        assert error["code"] == "upstream_timeout", error

    deadline = time.monotonic() + 20
    while _fal_stats(stack)["dripping"]:  # the gateway hung up on every drip it gave up on
        assert time.monotonic() < deadline, f"connections left dripping: {_fal_stats(stack)}"
        time.sleep(0.2)

    outcomes = list(dripped)
    deadline = time.monotonic() + 60
    while not any(status == 200 for status, _, _ in outcomes[-DRIPS:]):  # a breaker's cool-down, then trials
        assert time.monotonic() < deadline, f"fal traffic never came back: {outcomes[-DRIPS:]}"
        time.sleep(0.5)
        outcomes += asyncio.run(_requests(stack, DRIPS))
    assert _fal_stats(stack)["drips"] == DRIPS  # recovered on ordinary answers

    served = {rid for status, rid, _ in outcomes if status == 200}
    failed = {rid for status, rid, _ in outcomes if status != 200}
    assert all(status in (200, 503, 504) for status, _, _ in outcomes), outcomes
    with redis.Redis.from_url(stack.redis_url) as r:
        deadline = time.monotonic() + 20
        while True:
            events = [f for _, f in r.xrange(team_prefix(stack.team_id) + "ledger")]
            pending = r.hlen(team_prefix(stack.team_id) + "res")
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    charged = [e[b"request_id"].decode() for e in events if int(e[b"charged_micros"]) > 0]
    assert len(charged) == len(set(charged)) and set(charged) == served
    assert not failed & set(charged)
    assert sum(int(e[b"charged_micros"]) for e in events) == len(served) * PRICE
    assert pending == 0
