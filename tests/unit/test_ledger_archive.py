"""The ledger archive's pure parts: days as stream-id ranges, the day object's format (the same
bytes for the same events), what a day adds up to, the manifest, and the local directory store."""

from __future__ import annotations

import calendar
import gzip
import json
from pathlib import Path

import pytest

from gateway.accounting.ledger_archive import (
    LedgerArchive,
    LedgerEvent,
    Manifest,
    day_bounds_ms,
    day_of_ms,
    day_totals,
    decode_day,
    encode_day,
    entry_order,
)
from gateway.images.blobs import FileBlobs, check_key

DAY = 86_400_000


def _event(
    entry_id: str, status: str = "succeeded", model: str = "m", images: int = 1, charged: int = 40
) -> LedgerEvent:
    fields = {"request_id": f"req_{entry_id}", "status": status, "model": model, "images": str(images),
              "charged_micros": str(charged if status == "succeeded" else 0), "provider_cost_micros": "7"}  # fmt: skip
    return LedgerEvent(entry_id, fields)


def test_a_day_is_the_range_of_stream_ids_of_its_utc_milliseconds() -> None:
    start, end = day_bounds_ms("2026-12-06")
    assert start == calendar.timegm((2026, 12, 6, 0, 0, 0)) * 1000 and end == start + DAY - 1
    assert day_of_ms(start) == day_of_ms(end) == "2026-12-06"
    assert day_of_ms(start - 1) == "2026-12-05" and day_of_ms(end + 1) == "2026-12-07"
    assert day_bounds_ms("1970-01-01") == (0, DAY - 1)
    # leap day, and the last day of a year
    assert day_of_ms(day_bounds_ms("2028-02-29")[1] + 1) == "2028-03-01"
    assert day_of_ms(day_bounds_ms("2026-12-31")[1] + 1) == "2027-01-01"


def test_stream_ids_order_by_millisecond_then_sequence_not_as_text() -> None:
    ids = ["1000-10", "999-0", "1000-2", "10000-0"]
    assert sorted(ids, key=entry_order) == ["999-0", "1000-2", "1000-10", "10000-0"]
    assert LedgerEvent(f"{day_bounds_ms('2026-11-30')[1]}-3", {}).day == "2026-11-30"


def test_a_day_object_is_the_same_bytes_for_the_same_events_and_reads_back_whole() -> None:
    events = [_event(f"{1000 + i}-0", status="failed" if i % 3 == 0 else "succeeded") for i in range(50)]
    data = encode_day(events)
    assert encode_day([LedgerEvent(e.id, dict(reversed(list(e.fields.items())))) for e in events]) == data
    assert decode_day(data) == events
    first = json.loads(gzip.decompress(data).splitlines()[0])
    assert first == {"id": "1000-0", "fields": dict(events[0].fields)}


def test_day_totals_count_every_event_and_sum_the_succeeded_ones_by_model() -> None:
    events = [_event("1-0", model="a", images=2, charged=100), _event("2-0", model="b", images=1, charged=30),
              _event("3-0", status="failed", model="a"), _event("4-0", model="a", images=1, charged=50),
              LedgerEvent("5-0", {"status": "expired", "images": "0", "charged_micros": "0"})]  # fmt: skip
    t = day_totals(events)
    assert (t.events, t.succeeded, t.images, t.charged_micros, t.provider_cost_micros) == (5, 3, 4, 180, 21)
    assert t.by_model == {"a": {"requests": 2, "images": 3, "spent_micros": 150},
                          "b": {"requests": 1, "images": 1, "spent_micros": 30}}  # fmt: skip


def test_a_manifest_reads_back_as_it_was_written() -> None:
    events = [_event("1-0"), _event("2-5")]
    m = Manifest("team_1", "1970-01-01", "ledger/team_1/1970-01/1970-01-01.jsonl.gz", "ab", 10, "1-0", "2-5",
                 day_totals(events))  # fmt: skip
    assert Manifest.decode(m.encode()) == m
    assert json.loads(m.encode())["totals"]["by_model"] == {"m": {"requests": 2, "images": 2, "spent_micros": 80}}


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "", "a/b.tmp-1", "a b"])
def test_a_blob_key_that_could_leave_the_store_is_refused(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


async def test_the_local_directory_puts_gets_and_lists_whole_objects(tmp_path: Path) -> None:
    blobs = FileBlobs(tmp_path)
    await blobs.put("ledger/t/2026-12/2026-12-01.jsonl.gz", b"one")
    await blobs.put("ledger/t/2026-12/2026-12-01.jsonl.gz", b"two")  # replaced whole
    await blobs.put("ledger/t/2026-12/2026-12-02.manifest.json", b"{}")
    (tmp_path / "ledger/t/2026-12/2026-12-03.manifest.json.tmp-abc").write_bytes(b"half")  # a put cut short
    assert await blobs.get("ledger/t/2026-12/2026-12-01.jsonl.gz") == b"two"
    assert await blobs.get("ledger/t/2026-12/2026-12-09.jsonl.gz") is None
    assert await blobs.keys("ledger/t/2026-12/") == [
        "ledger/t/2026-12/2026-12-01.jsonl.gz", "ledger/t/2026-12/2026-12-02.manifest.json",
    ]  # fmt: skip
    assert await blobs.keys("ledger/t/2026-11/") == [] and await blobs.keys("ledger/") == await blobs.keys("ledger/t/")


async def test_a_written_day_is_committed_by_its_manifest_and_read_back_from_it(tmp_path: Path) -> None:
    archive = LedgerArchive(FileBlobs(tmp_path))
    start, _ = day_bounds_ms("2026-12-01")
    events = [_event(f"{start + i * 1000}-0") for i in range(20)]
    m = await archive.write_day("team_1", "2026-12-01", events)
    assert (tmp_path / "ledger/team_1/2026-12/2026-12-01.jsonl.gz").stat().st_size == m.size
    assert await archive.manifests("team_1", "2026-12") == {"2026-12-01": m}
    assert await archive.manifests("team_1", "2026-11") == {}
    assert await archive.read_days([m]) == events
    # An object that is not what its manifest says is never read as the day's events.
    (tmp_path / "ledger/team_1/2026-12/2026-12-01.jsonl.gz").write_bytes(encode_day(events[:-1]))
    with pytest.raises(Exception, match="cannot be read"):
        await archive.read_day(m)
