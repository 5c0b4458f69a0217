"""A team's ledger written as settle.lua writes it, at chosen times (a test cannot move Redis's
clock): each event's stream entry with an id at its time, and the month's aggregates, in one
transaction. For the ledger archive's tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.accounting.keys import TEAMS_SET, team_prefix
from gateway.accounting.ledger_archive import LedgerArchive, day_bounds_ms, day_of_ms
from gateway.accounting.usage import ledger_lines, month_usage
from gateway.redis.client import RedisClient

HOUR = 3_600_000


@dataclass
class Ledger:
    r: RedisClient
    teams: tuple[str, ...]
    months: tuple[str, ...] = ()
    events_per_day: int = field(default=13)  # 11 succeeded, 1 failed, 1 reservation expired

    async def settle(self, team: str, ms: int, status: str = "succeeded", model: str = "m1", images: int = 1) -> None:
        p, day = team_prefix(team), day_of_ms(ms)
        usage, charged = p + "usage:" + day[:7], 40_000 * images if status == "succeeded" else 0
        await self.r.sadd(TEAMS_SET, team)  # a key of its own: outside the team's slot on a cluster
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(usage, "requests", 1)
            if status == "succeeded":
                for name, value in (("spent_micros", charged), ("images", images), ("cost_micros", 9_000)):
                    pipe.hincrby(usage, name, value)
                for metric, value in (("images", images), ("requests", 1), ("spent_micros", charged)):
                    pipe.hincrby(usage, f"d|{day}|{model}|{metric}", value)
            else:
                pipe.hincrby(usage, "failed", 1)
            fields = {
                "request_id": f"req_{team}_{ms}", "status": status, "model": model,
                "images": images if status == "succeeded" else 0, "charged_micros": charged,
                "provider_cost_micros": 9_000, "ts_ms": ms, "team_id": team, "key_id": "key_1",
                "provider": "fal" if model == "m1" else "local_gpu", "kind": "generation", "size": "1024x1024",
                "latency_ms": 1200,
            }  # fmt: skip
            pipe.xadd(p + "ledger", fields, id=f"{ms}-*")
            await pipe.execute()

    async def seed(self, days: tuple[str, ...]) -> None:
        """Every team, every day (oldest first): successes of two models, a failure, an expiry."""
        for day in days:
            start, _ = day_bounds_ms(day)
            for team in self.teams:
                for i in range(12):
                    status = "failed" if i == 5 else "succeeded"
                    await self.settle(team, start + i * 2 * HOUR + 7, status, "m1" if i % 2 else "m2", 1 + i % 3)
                expired = {"request_id": "gone", "status": "expired", "images": 0, "charged_micros": 0}
                await self.r.xadd(team_prefix(team) + "ledger", expired, id=f"{start + 23 * HOUR}-*")

    async def reads(self, archive: LedgerArchive | None) -> dict[str, Any]:
        """What the usage API, the CSV invoice and GET /v1/team read from the ledger, per team and month."""
        out: dict[str, Any] = {}
        for team in self.teams:
            for month in self.months:
                out[f"{team} {month} lines"] = await ledger_lines(self.r, team, month, archive)
                out[f"{team} {month} usage"] = await month_usage(self.r, team, month)
        return out

    async def stream_ids(self, team: str) -> list[str]:
        return [i.decode() for i, _ in await self.r.xrange(team_prefix(team) + "ledger")]
