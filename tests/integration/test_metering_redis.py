"""Admission and settlement scripts against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.accounting.keys import KeyStore, TeamLimits, team_prefix
from gateway.accounting.metering import Meter, Settlement
from gateway.errors import InvalidRequestError, QuotaExceededError, RateLimitError


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _team(redis: Redis, *, rpm: int = 100, ipm: int = 100, in_flight: int = 100, budget: float = 100.0) -> str:
    team = await KeyStore(redis).create_team("t", budget, TeamLimits(rpm, ipm, in_flight))
    return team.id


def ok(n: int = 1, charge: int = 50_000) -> Settlement:
    return Settlement("succeeded", n, charge, 14_000 * n, "hidream-i1-full", (("provider", "local_gpu"),))


async def _usage(redis: Redis, team_id: str) -> dict[str, int]:
    keys = [k async for k in redis.scan_iter(match=team_prefix(team_id) + "usage:*")]
    assert len(keys) == 1
    return {k.decode(): int(v) for k, v in (await redis.hgetall(keys[0])).items()}


async def test_settle_charges_once_and_writes_one_ledger_event(redis: Redis) -> None:
    team = await _team(redis)
    meter = Meter(redis)
    adm = await meter.admit(team, "req_1", 2, 100_000, hold_s=60)
    assert (await _usage(redis, team))["reserved_micros"] == 100_000
    assert await meter.settle(adm, ok(2, 100_000)) == 100_000
    assert await meter.settle(adm, ok(2, 100_000)) is None  # second settle changes nothing
    usage = await _usage(redis, team)
    assert usage["spent_micros"] == 100_000 and usage["reserved_micros"] == 0 and usage["images"] == 2
    ledger = await redis.xrange(team_prefix(team) + "ledger")
    assert len(ledger) == 1
    fields = ledger[0][1]
    assert fields[b"request_id"] == b"req_1" and fields[b"charged_micros"] == b"100000"
    assert fields[b"provider"] == b"local_gpu"


async def test_failed_request_is_charged_nothing(redis: Redis) -> None:
    team = await _team(redis)
    meter = Meter(redis)
    adm = await meter.admit(team, "req_f", 1, 50_000, hold_s=60)
    failed = Settlement("failed", 0, 50_000, 0, "hidream-i1-full")
    assert await meter.settle(adm, failed) == 0
    usage = await _usage(redis, team)
    assert usage.get("spent_micros", 0) == 0 and usage["reserved_micros"] == 0 and usage["failed"] == 1


async def test_requests_per_minute_limit_gives_429_with_headers(redis: Redis) -> None:
    team = await _team(redis, rpm=3)
    meter = Meter(redis)
    for i in range(3):
        await meter.admit(team, f"r{i}", 1, 1, hold_s=60)
    with pytest.raises(RateLimitError) as info:
        await meter.admit(team, "r3", 1, 1, hold_s=60)
    h = info.value.headers
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(h["retry-after"]) <= 60


async def test_images_per_minute_counts_images_not_requests(redis: Redis) -> None:
    team = await _team(redis, ipm=5)
    meter = Meter(redis)
    await meter.admit(team, "a", 4, 1, hold_s=60)
    with pytest.raises(RateLimitError, match="images per minute"):
        await meter.admit(team, "b", 2, 1, hold_s=60)
    await meter.admit(team, "c", 1, 1, hold_s=60)
    with pytest.raises(InvalidRequestError) as info:
        await meter.admit(team, "d", 6, 1, hold_s=60)
    assert info.value.param == "n"


async def test_in_flight_limit_frees_a_slot_on_settle(redis: Redis) -> None:
    team = await _team(redis, in_flight=2)
    meter = Meter(redis)
    a = await meter.admit(team, "a", 1, 1, hold_s=60)
    await meter.admit(team, "b", 1, 1, hold_s=60)
    with pytest.raises(RateLimitError, match="in flight"):
        await meter.admit(team, "c", 1, 1, hold_s=60)
    await meter.settle(a, ok(1, 1))
    await meter.admit(team, "c", 1, 1, hold_s=60)


async def test_budget_counts_reservations_and_says_do_not_retry(redis: Redis) -> None:
    team = await _team(redis, budget=0.12)
    meter = Meter(redis)
    await meter.admit(team, "a", 1, 50_000, hold_s=60)
    await meter.admit(team, "b", 1, 50_000, hold_s=60)
    with pytest.raises(QuotaExceededError) as info:
        await meter.admit(team, "c", 1, 50_000, hold_s=60)
    assert info.value.status_code == 429 and info.value.headers["x-should-retry"] == "false"
    assert info.value.body()["error"]["code"] == "insufficient_quota"


async def test_expired_reservation_is_released_uncharged(redis: Redis) -> None:
    team = await _team(redis, in_flight=1, budget=0.05)
    meter = Meter(redis)
    dead = await meter.admit(team, "dead", 1, 50_000, hold_s=0.05)  # its gateway "dies"
    await asyncio.sleep(0.1)
    live = await meter.admit(team, "live", 1, 50_000, hold_s=60)
    assert await meter.settle(dead, ok()) is None  # too late: never charged twice
    assert await meter.settle(live, ok()) == 50_000
    usage = await _usage(redis, team)
    assert usage["spent_micros"] == 50_000 and usage["reserved_micros"] == 0
    statuses = [f[b"status"] for _, f in await redis.xrange(team_prefix(team) + "ledger")]
    assert statuses == [b"expired", b"succeeded"]
    # neither reservation is left in the deadline index
    assert await redis.zcard(team_prefix(team) + "holds") == 0


async def test_admission_with_thousands_in_flight_releases_only_the_expired(redis: Redis) -> None:
    """Expired reservations are found through the deadline index: live ones stay untouched, and a
    settled request leaves nothing behind in it."""
    team = await _team(redis, rpm=5000, ipm=5000, in_flight=5000, budget=1000.0)
    meter = Meter(redis)
    live = [await meter.admit(team, f"live{i}", 1, 1_000, hold_s=60) for i in range(2000)]
    await meter.admit(team, "dead", 1, 1_000, hold_s=0.05)
    await asyncio.sleep(0.1)
    last = await meter.admit(team, "last", 1, 1_000, hold_s=60)
    assert await redis.hlen(team_prefix(team) + "res") == 2001  # 2000 live + last; "dead" released
    assert await redis.zcard(team_prefix(team) + "holds") == 2001
    for adm in [*live, last]:
        await meter.settle(adm, ok(1, 1_000))
    assert await redis.zcard(team_prefix(team) + "holds") == 0
    usage = await _usage(redis, team)
    assert usage["spent_micros"] == 2001 * 1_000 and usage["reserved_micros"] == 0


async def test_concurrent_admissions_never_exceed_budget_or_limits(redis_url: str) -> None:
    setup = Redis.from_url(redis_url)
    team = await _team(setup, rpm=1000, ipm=1000, in_flight=1000, budget=1.0)
    await setup.aclose()
    clients = [Redis.from_url(redis_url) for _ in range(8)]
    meters = [Meter(c) for c in clients]

    async def one(i: int) -> bool:
        try:
            await meters[i % 8].admit(team, f"r{i}", 1, 50_000, hold_s=60)
            return True
        except QuotaExceededError:
            return False

    admitted = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(admitted) == 20  # $1.00 / $0.05
    for c in clients:
        await c.aclose()


async def test_idempotent_retry_replays_and_is_charged_once(redis: Redis) -> None:
    from gateway.accounting.metering import Idempotency, Replay, StillRunning

    team = await _team(redis)
    meter = Meter(redis)
    idem = Idempotency("retry-123", "ab" * 32)
    first = await meter.admit(team, "req_a", 1, 50_000, hold_s=60, idempotency=idem)
    assert not isinstance(first, Replay | StillRunning)
    running = await meter.admit(team, "req_b", 1, 50_000, hold_s=60, idempotency=idem)
    assert running == StillRunning("req_a")
    stored = Settlement("succeeded", 1, 50_000, 0, "hidream-i1-full", replay='{"body": 1}')
    assert await meter.settle(first, stored) == 50_000
    again = await meter.admit(team, "req_c", 1, 50_000, hold_s=60, idempotency=idem)
    assert again == Replay('{"body": 1}')
    usage = await _usage(redis, team)
    assert usage["spent_micros"] == 50_000 and usage["requests"] == 1
    assert len(await redis.xrange(team_prefix(team) + "ledger")) == 1
    with pytest.raises(InvalidRequestError) as info:
        await meter.admit(team, "req_d", 1, 50_000, hold_s=60, idempotency=Idempotency("retry-123", "cd" * 32))
    assert info.value.param == "Idempotency-Key"


async def test_failed_first_attempt_lets_the_same_key_run_again(redis: Redis) -> None:
    from gateway.accounting.metering import Idempotency, Replay, StillRunning

    team = await _team(redis)
    meter = Meter(redis)
    idem = Idempotency("k", "ef" * 32)
    first = await meter.admit(team, "r1", 1, 50_000, hold_s=60, idempotency=idem)
    assert not isinstance(first, Replay | StillRunning)
    await meter.settle(first, Settlement("failed", 0, 0, 0, "hidream-i1-full"))
    second = await meter.admit(team, "r2", 1, 50_000, hold_s=60, idempotency=idem)
    assert not isinstance(second, Replay | StillRunning) and second.request_id == "r2"
