"""Reading usage back: a team's month aggregates (written by the settlement script) and its
ledger events for that month (stream ids are Redis-time milliseconds, so a month is an id range;
its closed days may have moved to the archive, gateway/accounting/ledger_archive.py)."""

from __future__ import annotations

import calendar
import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.accounting.keys import team_prefix
from gateway.accounting.ledger_archive import LedgerArchive, LedgerEvent, entry_order
from gateway.catalog import micros_to_usd
from gateway.errors import InvalidRequestError
from gateway.redis.client import RedisClient, as_str

# ASCII digits only, the whole string (re's \d takes any script's digits, its $ a final newline).
MONTH = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
FIRST_MONTH = "1970-01"
# Per team: the last day the archiver trimmed from the stream (set in the same step as the trim).
ARCHIVED_THROUGH = "ledger:archived"

LEDGER_COLUMNS = (
    "time", "request_id", "team_id", "key_id", "model", "provider", "kind", "status", "images", "size",
    "charged_usd", "provider_cost_usd", "latency_ms", "error_kind",
)  # fmt: skip


def parse_month(value: str | None) -> str:
    if value is None:
        return datetime.now(UTC).strftime("%Y-%m")
    if not MONTH.fullmatch(value):
        raise InvalidRequestError(f"'month' must look like 2026-11; got '{value}'.", param="month")
    if value < FIRST_MONTH:  # the ledger's ids are milliseconds since 1970: nothing is older
        raise InvalidRequestError(f"'month' must be {FIRST_MONTH} or later; got '{value}'.", param="month")
    return value


def month_bounds_ms(month: str) -> tuple[int, int]:
    year, mon = int(month[:4]), int(month[5:])
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    days = calendar.monthrange(year, mon)[1]
    return start * 1000, (start + days * 86400) * 1000 - 1


@dataclass(frozen=True, slots=True)
class MonthUsage:
    team_id: str
    month: str
    requests: int
    failed: int
    images: int
    spent_micros: int
    reserved_micros: int
    provider_cost_micros: int
    by_day: tuple[dict[str, Any], ...]

    def as_json(self, budget_usd: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": "usage",
            "team_id": self.team_id,
            "month": self.month,
            "requests": self.requests,
            "failed_requests": self.failed,
            "images": self.images,
            "spent_usd": micros_to_usd(self.spent_micros),
            "reserved_usd": micros_to_usd(self.reserved_micros),
            "by_day": list(self.by_day),
        }
        if budget_usd is not None:
            out["budget_usd"] = budget_usd
        return out


async def month_usage(redis: RedisClient, team_id: str, month: str) -> MonthUsage:
    raw = await redis.hgetall(team_prefix(team_id) + "usage:" + month)
    fields = {as_str(k): int(v) for k, v in raw.items()}
    days: dict[tuple[str, str], dict[str, Any]] = {}
    for name, value in fields.items():
        if not name.startswith("d|"):
            continue
        _, day, model, metric = name.split("|")
        row = days.setdefault((day, model), {"date": day, "model": model, "requests": 0, "images": 0, "spent_usd": 0.0})
        row["spent_usd" if metric == "spent_micros" else metric] = (
            micros_to_usd(value) if metric == "spent_micros" else value
        )
    return MonthUsage(
        team_id=team_id,
        month=month,
        requests=fields.get("requests", 0),
        failed=fields.get("failed", 0),
        images=fields.get("images", 0),
        spent_micros=fields.get("spent_micros", 0),
        reserved_micros=fields.get("reserved_micros", 0),
        provider_cost_micros=fields.get("cost_micros", 0),
        by_day=tuple(days[k] for k in sorted(days)),
    )


async def ledger_events(
    redis: RedisClient, team_id: str, start_ms: int, end_ms: int, batch: int = 1000
) -> list[LedgerEvent]:
    """The stream's entries with ids from start_ms to end_ms (both included), oldest first."""
    events: list[LedgerEvent] = []
    cursor = f"{start_ms}-0"
    while True:
        entries = (
            await redis.xrange(
                team_prefix(team_id) + "ledger", min=cursor, max=f"{end_ms}-18446744073709551615", count=batch
            )
            or []
        )
        for entry_id, raw in entries:
            fields = {as_str(k): as_str(v) for k, v in (raw or {}).items()}
            events.append(LedgerEvent(as_str(entry_id or b"0-0"), fields))
        if len(entries) < batch:
            return events
        cursor = "(" + events[-1].id


async def month_events(
    redis: RedisClient, team_id: str, month: str, archive: LedgerArchive | None = None
) -> list[LedgerEvent]:
    """A month of a team's ledger: the days the archive has committed from the archive, the rest
    from the stream. The stream is read first: a day trimmed meanwhile was committed before its
    trim, so the manifests listed after it name it, and a day is never counted from both (one
    committed but not yet trimmed is taken from the archive only)."""
    start, end = month_bounds_ms(month)
    streamed = await ledger_events(redis, team_id, start, end)
    if archive is None:
        return streamed
    # A month of which no day was trimmed is whole in the stream: the store is not asked (nor
    # needed: a store that is down fails only the reads of archived months). Read after the
    # stream, as the manifests are: a day trimmed meanwhile has moved this mark already.
    through = await redis.get(team_prefix(team_id) + ARCHIVED_THROUGH)
    if through is None or as_str(through) < f"{month}-01":
        return streamed
    committed = await archive.manifests(team_id, month)
    if not committed:
        return streamed
    archived = await archive.read_days(committed.values())
    kept = [e for e in streamed if e.day not in committed]
    return sorted(archived + kept, key=lambda e: entry_order(e.id))


async def ledger_lines(
    redis: RedisClient, team_id: str, month: str, archive: LedgerArchive | None = None
) -> list[dict[str, Any]]:
    return [_line(team_id, e) for e in await month_events(redis, team_id, month, archive)]


def _line(team_id: str, event: LedgerEvent) -> dict[str, Any]:
    f = event.fields
    ts = int(f.get("ts_ms") or entry_order(event.id)[0])
    return {
        "time": datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds"),
        "request_id": f.get("request_id", ""),
        "team_id": f.get("team_id", team_id),
        "key_id": f.get("key_id", ""),
        "model": f.get("model", ""),
        "provider": f.get("provider", ""),
        "kind": f.get("kind", ""),
        "status": f.get("status", ""),
        "images": int(f.get("images", 0)),
        "size": f.get("size", ""),
        "charged_usd": micros_to_usd(int(f.get("charged_micros", 0))),
        "provider_cost_usd": micros_to_usd(int(f.get("provider_cost_micros", 0))),
        "latency_ms": int(f.get("latency_ms", 0) or 0),
        "error_kind": f.get("error_kind", ""),
    }


def to_csv(lines: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LEDGER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow(line)
    return buf.getvalue()
