"""The ledger archiver against a real redis-server and both stores (a local directory, and a real
S3-compatible server: moto's): closed days leave the stream for the store, checked, and every
read of the ledger gives what it gave before; an export cut short anywhere is finished by the
next round, never doubled; two archivers at once archive each day once."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.accounting.archiver import LedgerArchiver
from gateway.accounting.keys import TEAMS_SET, team_prefix
from gateway.accounting.ledger_archive import LedgerArchive, day_bounds_ms, day_of_ms
from gateway.accounting.metering import Admission, Meter, Settlement
from gateway.accounting.usage import ARCHIVED_THROUGH, ledger_events, ledger_lines
from gateway.images.blobs import BlobError, Blobs, FileBlobs, S3Blobs
from gateway.images.object_store import open_s3
from gateway.metrics import Metrics
from gateway.redis.client import RedisClient, connect
from tests.ledger_seed import HOUR, Ledger
from tests.s3_server import CREDENTIALS, S3Server

# 2026-11-02 12:00 UTC: 10-30, 10-31 and 11-01 are closed; 11-02 is today.
NOW = calendar.timegm((2026, 11, 2, 12, 0, 0)) * 1000
DAYS = ("2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02")
TEAMS = ("team_aaaa", "team_bbbb")
MONTHS = ("2026-10", "2026-11")


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["file", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    if request.param == "file":
        yield FileBlobs(tmp_path / "data")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    where = f"s3://{server.new_bucket()}/gw"
    yield S3Blobs(open_s3(where, endpoint_url=server.url, region="us-east-1"), where)


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[RedisClient]:
    client = connect(redis_url)
    yield client
    await client.aclose()


def _archiver(r: RedisClient, archive: LedgerArchive, metrics: Metrics | None = None) -> LedgerArchiver:
    async def now() -> int:
        return NOW

    return LedgerArchiver(r, archive, metrics, grace_s=3600, now_ms=now)


async def test_closed_days_move_to_the_store_and_every_read_is_unchanged(r: RedisClient, blobs: Blobs) -> None:
    ledger, archive, metrics = Ledger(r, TEAMS, MONTHS), LedgerArchive(blobs), Metrics()
    await ledger.seed(DAYS)
    before = await ledger.reads(archive)
    assert len(before["team_aaaa 2026-10 lines"]) == 26 and len(before["team_aaaa 2026-11 lines"]) == 26
    assert await _archiver(r, archive, metrics).run_once() == 6
    # The stream keeps today only; the closed days are in the store, each with its manifest.
    today_start, _ = day_bounds_ms("2026-11-02")
    for team in TEAMS:
        ids = await ledger.stream_ids(team)
        assert len(ids) == 13 and all(int(i.split("-")[0]) >= today_start for i in ids)
        for day in DAYS[:3]:
            m = await archive.manifest(team, day)
            assert m is not None and m.totals.events == 13 and m.totals.succeeded == 11
            assert await blobs.get(m.object) is not None
        assert await archive.manifest(team, "2026-11-02") is None
    assert await blobs.keys("ledger/team_aaaa/2026-10/") == [
        "ledger/team_aaaa/2026-10/2026-10-30.jsonl.gz", "ledger/team_aaaa/2026-10/2026-10-30.manifest.json",
        "ledger/team_aaaa/2026-10/2026-10-31.jsonl.gz", "ledger/team_aaaa/2026-10/2026-10-31.manifest.json",
    ]  # fmt: skip
    assert await ledger.reads(archive) == before
    # Without the archive the trimmed days are gone from what Redis alone can say.
    assert await ledger_lines(r, "team_aaaa", "2026-10") == []
    assert metrics.registry.get_sample_value("gateway_ledger_archived_days_total") == 6
    assert metrics.registry.get_sample_value("gateway_ledger_archived_events_total") == 6 * 13
    # Nothing is left to do until another day closes.
    assert await _archiver(r, archive, metrics).run_once() == 0
    assert await ledger.reads(archive) == before


class _ManifestsFail:
    """A store that takes every object but refuses the manifests: a round stopped just before its commit."""

    def __init__(self, blobs: Blobs) -> None:
        self.inner, self.where = blobs, blobs.where

    async def put(self, key: str, data: bytes) -> None:
        if key.endswith(".manifest.json"):
            raise BlobError()
        await self.inner.put(key, data)

    async def get(self, key: str) -> bytes | None:
        return await self.inner.get(key)

    async def keys(self, prefix: str) -> list[str]:
        return await self.inner.keys(prefix)


async def test_an_export_stopped_before_its_manifest_is_redone_and_never_doubled(r: RedisClient, blobs: Blobs) -> None:
    ledger, archive, metrics = Ledger(r, TEAMS, MONTHS), LedgerArchive(blobs), Metrics()
    await ledger.seed(DAYS)
    before = await ledger.reads(archive)
    assert await _archiver(r, LedgerArchive(_ManifestsFail(blobs)), metrics).run_once() == 0
    assert metrics.registry.get_sample_value("gateway_ledger_archive_failures_total", {"stage": "store"}) == 2
    # The first day's object was written, but nothing is committed and nothing trimmed.
    assert await blobs.get(archive.object_key("team_aaaa", "2026-10-30")) is not None
    assert await archive.manifests("team_aaaa", "2026-10") == {}
    assert len(await ledger.stream_ids("team_aaaa")) == 4 * 13
    assert await ledger.reads(archive) == before
    assert await _archiver(r, archive, metrics).run_once() == 6
    assert len(await ledger.stream_ids("team_aaaa")) == 13
    assert await ledger.reads(archive) == before


async def test_a_day_committed_but_not_yet_trimmed_is_read_once_then_trimmed(r: RedisClient, blobs: Blobs) -> None:
    ledger, archive = Ledger(r, TEAMS, MONTHS), LedgerArchive(blobs)
    await ledger.seed(DAYS)
    before = await ledger.reads(archive)
    # 10-30 archived and trimmed; then a round that died between the commit of 10-31 and its
    # trim: 10-31 is in the store and still in Redis, in a month readers take from the store.
    assert await _archiver(r, archive).archive_day("team_aaaa", "2026-10-30")
    assert await r.get(team_prefix("team_aaaa") + ARCHIVED_THROUGH) == b"2026-10-30"
    start, end = day_bounds_ms("2026-10-31")
    events = await ledger_events(r, "team_aaaa", start, end)
    assert len(events) == 13 and await r.xlen(team_prefix("team_aaaa") + "ledger") == 3 * 13
    await archive.write_day("team_aaaa", "2026-10-31", events)
    assert set(await archive.manifests("team_aaaa", "2026-10")) == {"2026-10-30", "2026-10-31"}
    assert await ledger.reads(archive) == before  # 10-31 counted from the archive only, not twice
    assert await _archiver(r, archive).run_once() == 5
    assert await r.get(team_prefix("team_aaaa") + ARCHIVED_THROUGH) == b"2026-11-01"
    assert await ledger.reads(archive) == before


class _Down:
    """A store that answers nothing."""

    where = "down"

    async def put(self, key: str, data: bytes) -> None:
        raise BlobError()

    async def get(self, key: str) -> bytes | None:
        raise BlobError()

    async def keys(self, prefix: str) -> list[str]:
        raise BlobError()


async def test_a_store_that_is_down_fails_only_the_reads_of_months_with_archived_days(
    r: RedisClient, blobs: Blobs
) -> None:
    ledger = Ledger(r, TEAMS, MONTHS)
    await ledger.seed(DAYS)
    before = await ledger.reads(LedgerArchive(blobs))
    assert await ledger.reads(LedgerArchive(_Down())) == before  # nothing archived: the store is not asked
    assert await _archiver(r, LedgerArchive(blobs)).archive_day("team_aaaa", "2026-10-30")
    with pytest.raises(BlobError) as failed:
        await ledger_lines(r, "team_aaaa", "2026-10", LedgerArchive(_Down()))
    assert failed.value.status_code == 503 and failed.value.code == "storage_unavailable"
    assert await ledger_lines(r, "team_aaaa", "2026-11", LedgerArchive(_Down())) == before["team_aaaa 2026-11 lines"]
    assert await ledger.reads(LedgerArchive(blobs)) == before


async def test_two_archivers_at_once_archive_each_day_once(r: RedisClient, redis_url: str, blobs: Blobs) -> None:
    ledger, archive = Ledger(r, TEAMS, MONTHS), LedgerArchive(blobs)
    await ledger.seed(DAYS)
    before = await ledger.reads(archive)
    other = connect(redis_url)
    try:
        # Two processes' rounds: the lease lets one do the work.
        done = await asyncio.gather(_archiver(r, archive).run_once(), _archiver(other, LedgerArchive(blobs)).run_once())
        assert sorted(done) == [0, 6]
        assert await ledger.reads(archive) == before
        # And should two work on one day anyway (a lease that lapsed mid-round), both write the
        # same object and manifest, and the day is trimmed once.
        await ledger.settle("team_aaaa", NOW + 30 * HOUR)  # tomorrow, so that today closes
        before = await ledger.reads(archive)
        a, b = _archiver(r, archive), _archiver(other, LedgerArchive(blobs))
        results = await asyncio.gather(*(x.archive_day("team_aaaa", "2026-11-02") for x in (a, b)))
        assert True in results
        assert len(await ledger.stream_ids("team_aaaa")) == 1
        m = await archive.manifest("team_aaaa", "2026-11-02")
        assert m is not None and m.totals.events == 13
        assert await ledger.reads(archive) == before
    finally:
        await other.aclose()


async def test_a_day_that_does_not_add_up_to_redis_aggregates_stays_in_redis(r: RedisClient, blobs: Blobs) -> None:
    ledger, archive, metrics = Ledger(r, TEAMS, MONTHS), LedgerArchive(blobs), Metrics()
    await ledger.seed(DAYS)
    await r.hincrby(team_prefix("team_bbbb") + "usage:2026-10", "d|2026-10-31|m1|spent_micros", 1)
    before = await ledger.reads(archive)
    assert await _archiver(r, archive, metrics).run_once() == 3 + 1  # team_aaaa whole; team_bbbb up to the bad day
    assert metrics.registry.get_sample_value("gateway_ledger_archive_failures_total", {"stage": "verify"}) == 1
    assert await archive.manifest("team_bbbb", "2026-10-30") is not None
    assert await archive.manifest("team_bbbb", "2026-10-31") is None
    assert len(await ledger.stream_ids("team_bbbb")) == 3 * 13
    assert await ledger.reads(archive) == before


async def test_requests_settled_by_the_real_script_archive_once_their_day_has_closed(
    r: RedisClient, redis_url: str, blobs: Blobs
) -> None:
    meter = Meter(r)
    await r.sadd(TEAMS_SET, "team_real")
    await r.hset(
        team_prefix("team_real") + "team",
        mapping={"rpm": 1000, "ipm": 1000, "max_in_flight": 100, "budget_micros": 10**12},
    )
    for i in range(20):
        admitted = await meter.admit("team_real", f"req_{i}", 1, 40_000, 60)
        assert isinstance(admitted, Admission)
        status = "failed" if i % 7 == 0 else "succeeded"
        outcome = Settlement(status, 1, 40_000, 9_000, "hidream-i1-full" if i % 2 else "hidream-i1-dev",
                             fields=(("provider", "local_gpu"),))  # fmt: skip
        assert await meter.settle(admitted, outcome) is not None
    now = int((await r.time())[0]) * 1000
    month = day_of_ms(now)[:7]
    archive = LedgerArchive(blobs)
    before = await ledger_lines(r, "team_real", month, archive)
    assert len(before) == 20

    async def tomorrow() -> int:
        return (now // 86_400_000 + 1) * 86_400_000 + 2 * HOUR

    archived = await LedgerArchiver(r, archive, grace_s=3600, now_ms=tomorrow).run_once()
    assert archived >= 1 and await r.xlen(team_prefix("team_real") + "ledger") == 0
    assert await ledger_lines(r, "team_real", month, archive) == before
