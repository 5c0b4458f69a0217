"""The per-process API-key cache against a real redis-server: a revocation announced by one process
reaches another process's cache, and a cached key is trusted no longer than its time to live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.accounting.keys import KeyStore, TeamLimits, hash_key


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[Redis, Redis]]:
    a, b = Redis.from_url(redis_url), Redis.from_url(redis_url)
    yield a, b
    await a.aclose()
    await b.aclose()


async def _wait_subscribed(redis: Redis, n: int) -> None:
    for _ in range(200):
        counts = dict(await redis.pubsub_numsub("gw:keys:revoked"))
        if counts.get(b"gw:keys:revoked", 0) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the revocation feed never subscribed")


async def test_revocation_in_one_process_drops_the_key_from_another_process_cache(
    clients: tuple[Redis, Redis],
) -> None:
    ra, rb = clients
    admin, replica = KeyStore(ra), KeyStore(rb, cache_ttl_s=3600)
    follower = asyncio.create_task(replica.follow_revocations())
    try:
        await _wait_subscribed(ra, 1)
        team = await admin.create_team("t", 10.0, TeamLimits(10, 10, 10))
        key, plain = await admin.create_key(team.id)
        assert await replica.authenticate(plain) is not None  # now cached in the replica
        # The cache answers without Redis: the record is gone yet the key still authenticates...
        await rb.delete(f"gw:key:{hash_key(plain)}")
        assert await replica.authenticate(plain) is not None
        # ...until a revocation is announced.
        await admin.revoke_key(key.id)
        for _ in range(200):
            if await replica.authenticate(plain) is None:
                break
            await asyncio.sleep(0.01)
        assert await replica.authenticate(plain) is None
    finally:
        follower.cancel()


async def test_a_cached_key_is_read_again_after_its_time_to_live(clients: tuple[Redis, Redis]) -> None:
    ra, rb = clients
    admin, replica = KeyStore(ra), KeyStore(rb, cache_ttl_s=0.2)  # no revocation feed: a missed message
    team = await admin.create_team("t", 10.0, TeamLimits(10, 10, 10))
    key, plain = await admin.create_key(team.id)
    assert await replica.authenticate(plain) is not None
    await admin.revoke_key(key.id)
    assert await replica.authenticate(plain) is not None  # still trusted from the cache
    await asyncio.sleep(0.3)
    assert await replica.authenticate(plain) is None


async def test_unknown_keys_are_not_cached_so_a_new_key_works_at_once(clients: tuple[Redis, Redis]) -> None:
    ra, rb = clients
    admin, replica = KeyStore(ra), KeyStore(rb, cache_ttl_s=3600)
    team = await admin.create_team("t", 10.0, TeamLimits(10, 10, 10))
    assert await replica.authenticate("sk-gw-" + "x" * 40) is None
    _, plain = await admin.create_key(team.id)
    assert await replica.authenticate(plain) is not None
