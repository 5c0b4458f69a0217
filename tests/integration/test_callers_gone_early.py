"""Callers that go away within the first milliseconds of their request, often while Redis is
admitting it (found by the soak, bench/soak.py). Each such request is settled at once, charged
nothing unless its answer was sent: no reservation is left holding the team's budget and in-flight
slots until it expires (the deadline plus a minute later)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from gateway.accounting.keys import team_prefix
from tests.integration.gateway_stack import Stack, running_stack
from tests.redis_server import running_redis

pytestmark = pytest.mark.slow

PRICE = 50_000
CALLERS = 40
LIMITS = {"requests_per_minute": 10_000, "images_per_minute": 10_000, "max_in_flight": 1000}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_redis(tmp_path / "redis") as server, running_stack(server, tmp_path, team={"limits": LIMITS}) as made:
        yield made


async def _gone_early(stack: Stack, i: int, rng: random.Random) -> None:
    """A whole request, then the connection closed 0 to 40 ms later, before the answer."""
    split = urlsplit(stack.base)
    body = json.dumps({"model": "hidream-i1-full", "prompt": f"gone {i}", "response_format": "b64_json"}).encode()
    head = (f"POST /v1/images/generations HTTP/1.1\r\nHost: {split.netloc}\r\nAuthorization: Bearer {stack.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    _, writer = await asyncio.open_connection(split.hostname, split.port)
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(rng.uniform(0.0, 0.04))
    writer.close()


async def _all(stack: Stack) -> None:
    rng = random.Random(7)
    callers = []
    for i in range(CALLERS):  # one every 30 ms, as callers come and go beside other traffic
        callers.append(asyncio.ensure_future(_gone_early(stack, i, rng)))
        await asyncio.sleep(0.03)
    await asyncio.gather(*callers)


def test_callers_gone_while_admitted_leave_no_reservation_and_pay_nothing_unserved(stack: Stack) -> None:
    client = stack.client()
    for _ in range(6):  # both gateway processes know the key: the callers below reach admission at once
        client.images.generate(model="hidream-i1-full", prompt="warm", response_format="b64_json")
    asyncio.run(_all(stack))
    p = team_prefix(stack.team_id)
    with redis.Redis.from_url(stack.redis_url) as r:
        deadline = time.monotonic() + 20  # far below the reservations' own expiry (300 s + 60 s)
        while r.hlen(p + "res") and time.monotonic() < deadline:
            time.sleep(0.2)
        held = r.hlen(p + "res")
        events = [f for _, f in r.xrange(p + "ledger")]
    assert held == 0, f"{held} of {CALLERS} reservations still held"
    # Some reached admission (a caller gone before its body is read never does), each settled once.
    assert 0 < len(events) - 6 <= CALLERS
    ids = [e[b"request_id"] for e in events]
    assert len(ids) == len(set(ids))
    for e in events[6:]:  # answered (and charged) only if its answer went out before the caller left
        status, charged = e[b"status"].decode(), int(e[b"charged_micros"])
        assert (status, charged) in {("cancelled", 0), ("succeeded", PRICE)}, e
