"""Keys' last use against a real redis-server: noted on authentication, written by the flush at most
once per key per interval per process, never moved back, never written to a revoked key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.accounting.keys import KeyStore, TeamLimits
from gateway.accounting.last_used import LastUse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _last_used(redis: Redis, key_id: str) -> int | None:
    value = await redis.hget(f"gw:keyid:{key_id}", "last_used")
    return None if value is None else int(value)


async def test_a_use_is_written_once_per_interval_and_the_latest_one_wins(redis: Redis) -> None:
    clock, wall = Clock(), Clock()
    keys = KeyStore(redis, last_use=LastUse(redis, interval_s=60, clock=clock, wall=wall))
    team = await keys.create_team("t", 10.0, TeamLimits(10, 10, 10))
    key, plain = await keys.create_key(team.id, "ci")
    assert (await keys.list_keys(team.id))[0].last_used is None
    assert await keys.last_use.flush() == 0  # nothing used yet

    wall.now = 1_800_000_000
    assert await keys.authenticate(plain) is not None
    assert await keys.last_use.flush() == 1
    assert (await keys.list_keys(team.id))[0].last_used == 1_800_000_000

    # Within the interval: more uses (from the cache, and read anew), no write however often it flushes.
    for second in range(1, 6):
        wall.now, clock.now = 1_800_000_000 + second, 1000.0 + second
        assert await keys.authenticate(plain) is not None
        assert await keys.last_use.flush() == 0
    assert await _last_used(redis, key.id) == 1_800_000_000

    # Past it: the latest use, in one write.
    clock.now = 1000.0 + 60
    assert await keys.last_use.flush() == 1
    assert await _last_used(redis, key.id) == 1_800_000_005
    assert await keys.last_use.flush() == 0  # nothing new since


async def test_another_process_never_moves_it_back_nor_revives_a_revoked_key(redis: Redis) -> None:
    wall_a, wall_b = Clock(), Clock()
    a = KeyStore(redis, last_use=LastUse(redis, interval_s=60, clock=Clock(), wall=wall_a))
    b = KeyStore(redis, last_use=LastUse(redis, interval_s=60, clock=Clock(), wall=wall_b))
    team = await a.create_team("t", 10.0, TeamLimits(10, 10, 10))
    key, plain = await a.create_key(team.id)
    wall_a.now, wall_b.now = 2_000, 1_500  # b saw the key earlier, and flushes later
    assert await a.authenticate(plain) is not None and await b.authenticate(plain) is not None
    assert await a.last_use.flush() == 1
    assert await b.last_use.flush() == 0
    assert await _last_used(redis, key.id) == 2_000

    other, other_plain = await a.create_key(team.id)
    assert await a.authenticate(other_plain) is not None
    assert await a.revoke_key(other.id)
    await a.last_use.flush()
    assert await redis.exists(f"gw:keyid:{other.id}") == 0
    assert [k.id for k in await a.list_keys(team.id)] == [key.id]
