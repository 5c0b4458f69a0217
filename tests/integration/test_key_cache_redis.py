"""The per-process API-key cache against a real redis-server: a revocation announced by one process
reaches another process's cache, and a cached key is trusted no longer than its time to live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from gateway.accounting.keys import KeyStore, TeamLimits, hash_key


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[Redis, Redis]]:
    a, b = Redis.from_url(redis_url), Redis.from_url(redis_url)
    yield a, b
    await a.aclose()
    await b.aclose()


async def _wait_subscribed(redis: Redis, n: int) -> None:
    """Until the feed has n subscribers (at least n; exactly 0 for n == 0)."""
    for _ in range(200):
        count = dict(await redis.pubsub_numsub("gw:keys:revoked")).get(b"gw:keys:revoked", 0)
        if (count >= n) if n else count == 0:
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


class _SubscribeLosesTheCancel(Redis):
    """A real client whose pubsub's subscribe gets its task's cancel just as the server's reply
    is in hand, through asyncio.wait_for as redis-py sends commands: on Python 3.11 the cancel is
    lost there (gateway/periodic.py). A shutdown hung so in CI: the feed went on listening."""

    cancel: asyncio.Task[None] | None = None

    def pubsub(self, **kwargs: Any) -> PubSub:
        pubsub = super().pubsub(**kwargs)
        subscribe = pubsub.subscribe

        async def subscribe_then_cancelled(*channels: Any) -> None:
            async def the_call() -> None:
                await subscribe(*channels)
                if self.cancel is not None:
                    self.cancel.cancel()

            await asyncio.wait_for(the_call(), 5)

        pubsub.subscribe = subscribe_then_cancelled  # type: ignore[method-assign]
        return pubsub


async def test_the_revocation_feed_ends_when_its_cancel_is_lost_in_the_client(
    redis_url: str, clients: tuple[Redis, Redis], caplog: pytest.LogCaptureFixture
) -> None:
    watcher, _ = clients
    client = _SubscribeLosesTheCancel.from_url(redis_url)
    try:
        feed = asyncio.create_task(KeyStore(client).follow_revocations(wake_s=0.05))
        client.cancel = feed
        try:
            done, _ = await asyncio.wait({feed}, timeout=10)  # the bound only keeps a regression from hanging
            assert feed in done and feed.cancelled()
        finally:
            client.cancel = None
            while not feed.done():
                feed.cancel()
                await asyncio.wait({feed}, timeout=0.1)
        assert "feed lost" not in caplog.text  # ended, not retried
        await _wait_subscribed(watcher, 0)  # and its subscription closed
    finally:
        await client.aclose()
