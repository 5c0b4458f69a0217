"""The ledger archive: each closed UTC day of a team's ledger stream, kept in the store as one
gzip'd JSON-lines object (`ledger/<team>/<YYYY-MM>/<YYYY-MM-DD>.jsonl.gz`, one stream entry a
line, its fields as settle.lua wrote them) and a manifest beside it (`...manifest.json`: the
object's digest, counts and sums). The manifest is written last and is what commits a day: a
reader takes a day from the archive only when its manifest exists, and the archiver trims the
stream only after that (gateway/accounting/archiver.py)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

from gateway.errors import StorageUnavailableError
from gateway.images.blobs import Blobs

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
FORMAT = "ledger-day/jsonl.gz/1"
_EPOCH = date(1970, 1, 1)
T = TypeVar("T")


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream id as (milliseconds, sequence), the order Redis keeps them in."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def day_of_ms(ms: int) -> str:
    """The UTC day ("2026-11-30") of a time in milliseconds since 1970 (a stream id's first part)."""
    return (_EPOCH + timedelta(days=ms // DAY_MS)).isoformat()


def day_bounds_ms(day: str) -> tuple[int, int]:
    """The first and the last millisecond of a UTC day: the stream ids it holds."""
    start = (date.fromisoformat(day) - _EPOCH).days * DAY_MS
    return start, start + DAY_MS - 1


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One stream entry as Redis holds it: its id and its fields, all text."""

    id: str
    fields: Mapping[str, str]

    @property
    def day(self) -> str:
        return day_of_ms(entry_order(self.id)[0])


@dataclass(frozen=True, slots=True)
class DayTotals:
    """What a day's events add up to; by_model covers succeeded events, as the month hash's
    per-day fields `d|<day>|<model>|...` do (settle.lua)."""

    events: int
    succeeded: int
    images: int
    charged_micros: int
    provider_cost_micros: int
    by_model: dict[str, dict[str, int]]  # model -> {"requests", "images", "spent_micros"}


def day_totals(events: Iterable[LedgerEvent]) -> DayTotals:
    n = succeeded = images = charged = cost = 0
    by_model: dict[str, dict[str, int]] = {}
    for e in events:
        n += 1
        if e.fields.get("status") != "succeeded":
            continue
        got, paid = int(e.fields.get("images", 0)), int(e.fields.get("charged_micros", 0))
        succeeded += 1
        images += got
        charged += paid
        cost += int(e.fields.get("provider_cost_micros", 0))
        row = by_model.setdefault(e.fields.get("model", ""), {"requests": 0, "images": 0, "spent_micros": 0})
        row["requests"] += 1
        row["images"] += got
        row["spent_micros"] += paid
    return DayTotals(n, succeeded, images, charged, cost, dict(sorted(by_model.items())))


@dataclass(frozen=True, slots=True)
class Manifest:
    team_id: str
    day: str
    object: str  # the day's key in the store
    sha256: str  # of the object's bytes
    size: int  # of the object, in bytes
    first_id: str
    last_id: str
    totals: DayTotals
    format: str = FORMAT

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        raw: dict[str, Any] = json.loads(data)
        return cls(**(raw | {"totals": DayTotals(**raw["totals"])}))


def encode_day(events: Iterable[LedgerEvent]) -> bytes:
    """Deterministic for the same events (sorted keys, no time in the gzip header): an export
    that is redone writes what it wrote before."""
    lines = b"".join(
        json.dumps({"id": e.id, "fields": dict(e.fields)}, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        for e in events
    )
    return gzip.compress(lines, compresslevel=6, mtime=0)


def decode_day(data: bytes) -> list[LedgerEvent]:
    out = []
    for line in gzip.decompress(data).splitlines():
        raw = json.loads(line)
        out.append(LedgerEvent(raw["id"], raw["fields"]))
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArchiveCorruptError(StorageUnavailableError):
    """A committed day whose object is missing or is not what its manifest says."""

    def __init__(self, key: str) -> None:
        log.error("the ledger archive's %s is missing or does not match its manifest", key)
        super().__init__("An archived day of the ledger cannot be read; the gateway's operator has been told.")


class LedgerArchive:
    def __init__(self, blobs: Blobs, *, concurrency: int = 8) -> None:
        self.blobs = blobs
        self._concurrency = concurrency

    @staticmethod
    def object_key(team_id: str, day: str) -> str:
        return f"ledger/{team_id}/{day[:7]}/{day}.jsonl.gz"

    @staticmethod
    def manifest_key(team_id: str, day: str) -> str:
        return f"ledger/{team_id}/{day[:7]}/{day}.manifest.json"

    async def manifest(self, team_id: str, day: str) -> Manifest | None:
        data = await self.blobs.get(self.manifest_key(team_id, day))
        return None if data is None else Manifest.decode(data)

    async def manifests(self, team_id: str, month: str) -> dict[str, Manifest]:
        """The committed days of a month: day -> its manifest."""
        keys = await self.blobs.keys(f"ledger/{team_id}/{month}/")
        days = [k.rsplit("/", 1)[1].removesuffix(".manifest.json") for k in keys if k.endswith(".manifest.json")]
        found = await self._bounded(self.manifest(team_id, day) for day in days)
        return {m.day: m for m in found if m is not None}

    async def read_day(self, manifest: Manifest) -> list[LedgerEvent]:
        data = await self.blobs.get(manifest.object)
        if data is None or await asyncio.to_thread(_sha256, data) != manifest.sha256:
            raise ArchiveCorruptError(manifest.object)
        return await asyncio.to_thread(decode_day, data)  # a busy day is megabytes: off the event loop

    async def read_days(self, manifests: Iterable[Manifest]) -> list[LedgerEvent]:
        """The events of these committed days, in stream order."""
        days = await self._bounded(self.read_day(m) for m in manifests)
        return sorted((e for day in days for e in day), key=lambda e: entry_order(e.id))

    async def write_day(self, team_id: str, day: str, events: list[LedgerEvent]) -> Manifest:
        """Put a day's object, read it back and check it, then put its manifest (the commit) and
        check that too. Safe to redo: the same events give the same object and manifest."""
        data = await asyncio.to_thread(encode_day, events)
        manifest = Manifest(
            team_id=team_id, day=day, object=self.object_key(team_id, day),
            sha256=await asyncio.to_thread(_sha256, data), size=len(data),
            first_id=events[0].id, last_id=events[-1].id, totals=await asyncio.to_thread(day_totals, events),
        )  # fmt: skip
        await self.blobs.put(manifest.object, data)
        if await self.read_day(manifest) != events:
            raise ArchiveCorruptError(manifest.object)
        key = self.manifest_key(team_id, day)
        await self.blobs.put(key, manifest.encode())
        if await self.manifest(team_id, day) != manifest:
            raise ArchiveCorruptError(key)
        return manifest

    async def _bounded(self, calls: Iterable[Awaitable[T]]) -> list[T]:
        gate = asyncio.Semaphore(self._concurrency)

        async def one(call: Awaitable[T]) -> T:
            async with gate:
                return await call

        return list(await asyncio.gather(*(one(c) for c in calls)))
