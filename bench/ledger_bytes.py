"""Redis memory one settled request costs, with the ledger kept in Redis and after the archiver
has moved its day to the store (issue 14). Every piece is real: a redis-server of its own, the
admission and settlement scripts through Meter with the fields the service writes, the archiver
with a local-directory store. Redis's clock cannot be moved, so the archiver is told that it is
tomorrow (past the grace period): it archives and trims today as it would tomorrow.

    .venv/bin/python -m bench.ledger_bytes [--requests 20000]

Memory is Redis's own `used_memory` (bytes its allocator holds), read after the rate-limit
windows (a minute of requests, expiring) are deleted so that only what stays is counted."""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

import redis

from bench.stack import wait_for_redis
from gateway.accounting.archiver import LedgerArchiver
from gateway.accounting.keys import KeyStore, TeamLimits, team_prefix
from gateway.accounting.ledger_archive import DAY_MS, LedgerArchive
from gateway.accounting.metering import Admission, Meter, Settlement
from gateway.ids import RandomIds, request_id
from gateway.images.blobs import FileBlobs
from gateway.redis.client import connect
from gateway.redis.embedded import find_redis_server
from tests.fakes.server import free_port
from tests.processes import Process


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as r:
        r.execute_command("MEMORY PURGE")  # jemalloc gives back what it freed: used_memory counts holdings
        return int(r.info("memory")["used_memory"])


def drop_windows(url: str, team_id: str) -> None:
    with redis.Redis.from_url(url) as r:
        r.delete(team_prefix(team_id) + "win:req", team_prefix(team_id) + "win:img")


async def settle(url: str, team_id: str, start: int, n: int) -> None:
    r = connect(url)
    meter, ids = Meter(r), RandomIds()
    try:
        for i in range(start, start + n):
            admitted = await meter.admit(team_id, request_id(ids), 1, 40_000, 300)  # random, as served
            assert isinstance(admitted, Admission)
            fields = (
                ("team_id", team_id), ("key_id", "key_0123456789abcdef"), ("provider", "local_gpu"),
                ("size", "1024x1024"), ("requested_images", "1"), ("kind", "generation"),
                ("latency_ms", str(random.randint(8_000, 40_000))), ("error_kind", ""),
            )  # fmt: skip
            model = ("hidream-i1-full", "hidream-i1-dev", "hidream-i1-fast")[i % 3]
            await meter.settle(admitted, Settlement("succeeded", 1, 40_000, 12_000, model, fields))
    finally:
        await r.aclose()


async def archive(url: str, root: Path) -> int:
    r = connect(url)
    now = int((await r.time())[0]) * 1000

    async def tomorrow() -> int:
        return (now // DAY_MS + 1) * DAY_MS + 2 * 3_600_000

    try:
        return await LedgerArchiver(r, LedgerArchive(FileBlobs(root)), grace_s=3600, now_ms=tomorrow).run_once()
    finally:
        await r.aclose()


async def make_team(url: str) -> str:
    r = connect(url)
    try:
        team = await KeyStore(r).create_team("bench", 10.0**9, TeamLimits(10**9, 10**9, 10**6))
        return team.id
    finally:
        await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000, help="settled first, not counted (keys and hashes made)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        server = Process(
            "redis",
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--maxmemory-policy", "noeviction"],
            {}, workdir / "redis.log",
        )  # fmt: skip
        wait_for_redis(url)
        try:
            team_id = asyncio.run(make_team(url))
            asyncio.run(settle(url, team_id, 0, args.warmup))
            drop_windows(url, team_id)
            base = used_memory(url)
            asyncio.run(settle(url, team_id, args.warmup, args.requests))
            drop_windows(url, team_id)
            kept = used_memory(url)
            days = asyncio.run(archive(url, workdir / "archive"))
            trimmed = used_memory(url)
            stored = sum(p.stat().st_size for p in (workdir / "archive").rglob("*") if p.is_file())
        finally:
            server.stop()
    n = args.requests
    per_before, per_after = (kept - base) / n, (trimmed - base) / n
    print(f"settled requests measured:           {n} (after {args.warmup} not counted)")
    print(f"Redis used_memory (bytes):           {base} before, {kept} after them, {trimmed} after the archiver")
    print(f"Redis bytes per settled request:     {per_before:8.1f}  ledger kept in Redis")
    print(f"                                     {per_after:8.1f}  after the archiver (days archived: {days})")
    print(f"after / before:                      {per_after / per_before:8.3f}")
    print(f"archive bytes per request in store:  {stored / (n + args.warmup):8.1f}  (gzip'd JSON lines + manifest)")


if __name__ == "__main__":
    main()
