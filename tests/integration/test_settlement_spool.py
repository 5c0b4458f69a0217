"""A settlement that cannot reach Redis is kept on disk and charged once when Redis returns."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from gateway.accounting.keys import KeyStore, TeamLimits, team_prefix
from gateway.accounting.metering import Admission, Meter, Settlement
from gateway.accounting.spool import SettlementSpool, to_record
from tests.redis_server import RedisServer


async def test_settlement_survives_a_redis_outage_and_charges_once(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    redis = Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=0.5)
    spool = SettlementSpool(tmp_path / "spool")
    meter = Meter(redis, spool=spool, settle_attempts=2)
    try:
        team = await KeyStore(redis).create_team("t", 10.0, TeamLimits(100, 100, 100))
        adm = await meter.admit(team.id, "req_out", 2, 100_000, hold_s=600)
        assert isinstance(adm, Admission)

        server.kill()  # Redis dies while the request is being served
        outcome = Settlement("succeeded", 2, 100_000, 28_000, "hidream-i1-full", (("provider", "local_gpu"),))
        assert await meter.settle(adm, outcome) is None
        assert [p.name for p in spool.pending()] == ["req_out.json"]
        assert await spool.drain(meter.settle_spooled) == 0  # still down: kept

        server.start()  # back, with its append-only file
        assert await spool.drain(meter.settle_spooled) == 1
        assert spool.pending() == []
        # a second replay (another process, a crash before delete) changes nothing
        spool.put("req_out", to_record(admission=adm, outcome=outcome))
        assert await spool.drain(meter.settle_spooled) == 1

        usage = {k.decode(): int(v) for k, v in (await redis.hgetall(_usage_key(team.id))).items()}
        assert usage["spent_micros"] == 100_000 and usage["reserved_micros"] == 0 and usage["images"] == 2
        ledger = await redis.xrange(team_prefix(team.id) + "ledger")
        assert [f[b"request_id"] for _, f in ledger] == [b"req_out"]
    finally:
        await redis.aclose()
        server.stop()


def _usage_key(team_id: str) -> str:
    return team_prefix(team_id) + "usage:" + datetime.now(UTC).strftime("%Y-%m")
