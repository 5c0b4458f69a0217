"""Moves the closed days of every team's ledger stream out of Redis into the archive
(gateway/accounting/ledger_archive.py). Per day, oldest first: read it from the stream, check it
against the month's own aggregates (the per-day fields settle.lua keeps), write the object, read
it back, commit it with its manifest, and only then trim the stream below the next day
(XTRIM MINID). Every gateway process runs it; a lease in Redis lets one at a time do the work.

Each step is safe to redo, so a round cut short anywhere is finished by the next one without a
day counted twice: readers take a day from the archive once its manifest exists and skip the
stream's entries of that day, and the stream loses a day only after its manifest was checked."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from gateway.accounting.keys import TEAMS_SET, team_prefix
from gateway.accounting.ledger_archive import (
    ArchiveCorruptError,
    DayTotals,
    LedgerArchive,
    day_bounds_ms,
    day_of_ms,
    day_totals,
    entry_order,
)
from gateway.accounting.usage import ARCHIVED_THROUGH, ledger_events
from gateway.images.blobs import BlobError
from gateway.metrics import Metrics
from gateway.redis.client import REDIS_ERRORS, RedisClient, as_str

log = logging.getLogger(__name__)

LOCK = "gw:ledger:archiver"
# Compare-and-renew and compare-and-delete: a process whose lease lapsed never touches another's.
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# The trim and the team's archived-through day (ARCHIVED_THROUGH) in one step, the day never moved
# back (a late archiver trims an earlier day again): readers go to the store for a month only
# when this day says the archive holds some of it (gateway/accounting/usage.py).
TRIM = """
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
local through = redis.call('GET', KEYS[2])
if not through or through < ARGV[2] then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""


class ArchiveMismatchError(Exception):
    """A day's events do not add up to what Redis's aggregates say, or to what was committed."""


async def redis_now_ms(redis: RedisClient) -> int:
    """Redis's clock, the one stream ids come from (the gateway's own may differ)."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


class LedgerArchiver:
    def __init__(
        self,
        redis: RedisClient,
        archive: LedgerArchive,
        metrics: Metrics | None = None,
        *,
        grace_s: float = 3600.0,
        lease_s: float = 600.0,
        now_ms: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._r = redis
        self._archive = archive
        self._metrics = metrics
        # A day is closed this long after its end by Redis's clock: settle.lua stamps an event
        # when it runs, so nothing lands in a past day, but a failover to a replica whose clock
        # is a little behind could.
        self._grace_ms = int(grace_s * 1000)
        self._lease_ms = int(lease_s * 1000)
        self._now = now_ms or (lambda: redis_now_ms(redis))

    async def run_once(self) -> int:
        """One round over every team: the days archived (0 when another process holds the lease)."""
        token = secrets.token_hex(8)
        if not await self._r.set(LOCK, token, nx=True, px=self._lease_ms):
            return 0
        archived = 0
        try:
            for team_id in sorted(as_str(m) for m in await self._r.smembers(TEAMS_SET)):
                done, holding = await self.archive_team(team_id, token)
                archived += done
                if not holding:
                    log.warning("ledger archive: the lease lapsed; the process holding it now goes on")
                    break
        finally:
            await self._r.eval(RELEASE, 1, LOCK, token)
        return archived

    async def archive_team(self, team_id: str, token: str) -> tuple[int, bool]:
        """Archive the team's closed days, oldest first: how many were, and whether this process
        still holds the lease. A failure stops the team's round (its later days wait: the stream
        is trimmed from its oldest day on) and is counted and logged, never raised."""
        stream = team_prefix(team_id) + "ledger"
        done = 0
        try:
            closed_before = await self._now() - self._grace_ms
            while True:
                first = await self._first_id(stream)
                if first is None:
                    return done, True
                day = day_of_ms(entry_order(first)[0])
                if day_bounds_ms(day)[1] >= closed_before or not await self.archive_day(team_id, day):
                    return done, True
                done += 1
                if not await self._r.eval(RENEW, 1, LOCK, token, self._lease_ms):
                    return done, False
        except Exception as exc:  # one team's bad day must not stop the others'
            stage = _stage(exc)
            if self._metrics is not None:
                self._metrics.ledger_archive_failures.labels(stage).inc()
            log.error("ledger archive of team %s stopped (%s): %s", team_id, stage, exc, exc_info=stage == "other")
            return done, True

    async def archive_day(self, team_id: str, day: str) -> bool:
        """Export, check, commit and trim one closed day; False when another archiver trimmed it
        while this one read it (it committed the day first: there is nothing left to do)."""
        stream = team_prefix(team_id) + "ledger"
        start, end = day_bounds_ms(day)
        events = await ledger_events(self._r, team_id, start, end)
        # Read whole: had another archiver trimmed the day meanwhile, the stream's oldest entry
        # would now lie past the first one read. Only then are the events written anywhere.
        first = await self._first_id(stream)
        if not events or first is None or entry_order(first) > entry_order(events[0].id):
            return False
        totals = await asyncio.to_thread(day_totals, events)
        await self._check_aggregates(team_id, day, totals)
        committed = await self._archive.manifest(team_id, day)
        if committed is None:
            await self._archive.write_day(team_id, day, events)
        elif await self._archive.read_day(committed) != events:
            # committed earlier from a stream that held other events: nothing here can say which is right
            raise ArchiveMismatchError(f"{day} was committed with other events than the stream holds")
        # ids below the next day's first millisecond: this day and none after it
        await self._r.eval(TRIM, 2, stream, team_prefix(team_id) + ARCHIVED_THROUGH, f"{end + 1}-0", day)
        if self._metrics is not None:
            self._metrics.ledger_archived_days.inc()
            self._metrics.ledger_archived_events.inc(len(events))
        log.info(
            "ledger archive: team %s %s, %d events (%d succeeded, %d micro-USD), moved from Redis to %s",
            team_id, day, totals.events, totals.succeeded, totals.charged_micros, self._archive.blobs.where,
        )  # fmt: skip
        return True

    async def _first_id(self, stream: str) -> str | None:
        head = await self._r.xrange(stream, count=1)
        return as_str(head[0][0] or b"") if head else None

    async def _check_aggregates(self, team_id: str, day: str, totals: DayTotals) -> None:
        """The day's succeeded events against the month hash's `d|<day>|<model>|<metric>` fields,
        which settle.lua wrote in the same step as each event."""
        raw = await self._r.hgetall(team_prefix(team_id) + "usage:" + day[:7])
        head = f"d|{day}|"
        kept: dict[str, dict[str, int]] = {}
        for name, value in ((as_str(k), int(v)) for k, v in raw.items()):
            if name.startswith(head):
                model, _, metric = name[len(head) :].rpartition("|")
                kept.setdefault(model, {"requests": 0, "images": 0, "spent_micros": 0})[metric] = value
        if dict(sorted(kept.items())) != totals.by_model:
            raise ArchiveMismatchError(
                f"{day}: the stream's succeeded events add up to {totals.by_model}, Redis's aggregates to {kept}"
            )


def _stage(exc: BaseException) -> str:
    if isinstance(exc, ArchiveMismatchError):
        return "verify"
    if isinstance(exc, BlobError | ArchiveCorruptError):
        return "store"
    if isinstance(exc, REDIS_ERRORS):
        return "redis"
    return "other"
