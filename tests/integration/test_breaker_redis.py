"""The circuit breaker against a real redis-server, shared by independent clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.redis.scripts import script_client_for
from gateway.routing.breaker import BreakerConfig, RouteHealth, RouteStats

FAST = BreakerConfig(window=10, min_samples=6, failure_ratio=0.5, consecutive_failures=3, cooldown_s=0.2, trial_s=5)


@pytest.fixture(params=["redis-py", "lean"])
async def two(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[tuple[RouteHealth, RouteHealth]]:
    """Two processes' views, each through redis-py or each through the lean script client."""
    a, b = Redis.from_url(redis_url), Redis.from_url(redis_url)
    lean = [script_client_for(redis_url), script_client_for(redis_url)] if request.param == "lean" else [None, None]
    yield RouteHealth(a, FAST, cache_s=0, scripts=lean[0]), RouteHealth(b, FAST, cache_s=0, scripts=lean[1])
    for client in lean:
        if client is not None:
            await client.aclose()
    await a.aclose()
    await b.aclose()


async def test_breaker_opens_after_consecutive_failures_seen_by_every_process(
    two: tuple[RouteHealth, RouteHealth],
) -> None:
    a, b = two
    assert await a.record("fal", "m", False, None) == "closed"
    assert await b.record("fal", "m", False, None) == "closed"
    assert await a.record("fal", "m", False, None) == "open"
    assert (await b.stats([("fal", "m")]))[("fal", "m")].state == "open"
    assert await b.try_trial("fal", "m") == "open"  # still cooling down


async def test_failure_ratio_opens_with_minimum_sample(two: tuple[RouteHealth, RouteHealth]) -> None:
    a, _ = two
    for ok in (True, False, True, False, True):
        assert await a.record("w", "m", ok, 0.1 if ok else None) == "closed"  # 5 < min_samples
    assert await a.record("w", "m", False, None) == "open"  # 3/6 failed


async def test_half_open_lets_exactly_one_trial_and_closes_on_success(two: tuple[RouteHealth, RouteHealth]) -> None:
    a, b = two
    for _ in range(3):
        await a.record("fal", "m", False, None)
    await asyncio.sleep(0.25)
    grants = await asyncio.gather(*(h.try_trial("fal", "m") for h in (a, b, a, b, a, b)))
    assert sorted(grants) == ["open"] * 5 + ["trial"]
    assert (await a.stats([("fal", "m")]))[("fal", "m")].state == "half_open"
    assert await b.record("fal", "m", True, 0.5) == "closed"
    assert (await a.stats([("fal", "m")]))[("fal", "m")].state == "closed"


async def test_failed_trial_reopens(two: tuple[RouteHealth, RouteHealth]) -> None:
    a, _ = two
    for _ in range(3):
        await a.record("fal", "m", False, None)
    await asyncio.sleep(0.25)
    assert await a.try_trial("fal", "m") == "trial"
    assert await a.record("fal", "m", False, None) == "open"
    assert await a.try_trial("fal", "m") == "open"


async def test_latency_estimates_follow_a_slowdown(two: tuple[RouteHealth, RouteHealth]) -> None:
    a, b = two
    for _ in range(20):
        await a.record("w", "m", True, 1.0)
    before = (await b.stats([("w", "m")]))[("w", "m")]
    assert before.ewma_s == pytest.approx(1.0) and before.p95_s == pytest.approx(1.0)
    for _ in range(10):
        await a.record("w", "m", True, 5.0)
    after = (await b.stats([("w", "m")]))[("w", "m")]
    assert after.ewma_s is not None and after.ewma_s > 4.0
    assert after.p95_s == pytest.approx(5.0) and after.samples == 30


async def test_successes_on_a_closed_route_are_batched_and_written_by_the_flush(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        await client.delete("gw:{route:local_gpu:b}:state", "gw:{route:local_gpu:b}:latency")
        health = RouteHealth(client, FAST, cache_s=60)
        assert (await health.stats([("local_gpu", "b")]))[("local_gpu", "b")].state == "closed"  # now cached
        for latency in (1.0, 2.0, 3.0):
            await health.succeeded("local_gpu", "b", latency)
        assert await client.llen("gw:{route:local_gpu:b}:latency") == 0  # nothing written yet
        await health.flush()
        assert await client.lrange("gw:{route:local_gpu:b}:latency", 0, -1) == [b"3000", b"2000", b"1000"]
        ewma = float(await client.hget("gw:{route:local_gpu:b}:state", "ewma_ms") or 0)
        assert 1000 < ewma < 3000
    finally:
        await client.aclose()


async def test_a_late_batch_of_older_successes_does_not_hide_a_run_of_failures(
    two: tuple[RouteHealth, RouteHealth],
) -> None:
    a, b = two
    a._cache_s = 60  # a batches its successes (the route is known closed)
    await a.stats([("fal", "late")])
    await a.succeeded("fal", "late", 0.5)  # happened first...
    await asyncio.sleep(0.01)
    assert await b.record("fal", "late", False, None) == "closed"
    assert await b.record("fal", "late", False, None) == "closed"
    await a.flush()  # ...but reaches Redis after two failures
    assert await b.record("fal", "late", False, None) == "open"  # the third failure in a row opens it


async def test_failures_one_team_may_have_caused_do_not_open_the_breaker(
    two: tuple[RouteHealth, RouteHealth],
) -> None:
    """An answer we could not parse may echo what the caller sent: one team's run of them moves
    nothing, however long; once a second team sees them too, they count as any failure."""
    a, b = two
    for _ in range(3):
        assert await a.record("fal", "m", True, 0.5) == "closed"
    for _ in range(FAST.window * 2):  # past both the consecutive count and the failure ratio
        assert await a.record("fal", "m", False, None, suspect_team="team-a") == "closed"
    assert await b.record("fal", "m", False, None, suspect_team="team-b") == "closed"  # corroborated: 1
    assert await a.record("fal", "m", False, None, suspect_team="team-a") == "closed"  # 2
    assert await a.record("fal", "m", False, None, suspect_team="team-a") == "open"  # 3 in a row


async def test_a_genuine_upstream_failure_still_opens_the_breaker_for_one_team(
    two: tuple[RouteHealth, RouteHealth],
) -> None:
    a, _ = two
    for _ in range(5):
        await a.record("fal", "m", False, None, suspect_team="team-a")  # moves nothing
    assert [await a.record("fal", "m", False, None) for _ in range(3)] == ["closed", "closed", "open"]


async def test_a_trial_failed_by_one_team_alone_is_handed_back(two: tuple[RouteHealth, RouteHealth]) -> None:
    """The one trial request proves nothing about the route when its failure may be the request's
    own: the next request may take the trial at once, with no new cool-down."""
    a, b = two
    for _ in range(3):
        await a.record("fal", "m", False, None)
    await asyncio.sleep(0.25)  # the cool-down
    assert await a.try_trial("fal", "m") == "trial"
    assert await a.record("fal", "m", False, None, suspect_team="team-a") == "open"
    assert await b.try_trial("fal", "m") == "trial"
    assert await b.record("fal", "m", True, 0.5) == "closed"


async def test_several_routes_are_read_in_one_call_written_or_not(two: tuple[RouteHealth, RouteHealth]) -> None:
    a, b = two
    await a.record("fal", "x", True, 0.5)
    for _ in range(3):
        await a.record("w", "x", False, None)
    got = await b.stats([("fal", "x"), ("w", "x"), ("never", "x")])
    assert (got[("fal", "x")].state, got[("fal", "x")].ewma_s, got[("fal", "x")].samples) == ("closed", 0.5, 1)
    assert got[("w", "x")].state == "open" and got[("w", "x")].opened_ms is not None
    assert got[("never", "x")] == RouteStats("closed", None, None, None, 0)
