"""Usage through the real app once closed days of the ledger have moved out of Redis: /v1/usage,
/admin/usage (JSON and the CSV invoice the `gateway usage` CLI fetches) and GET /v1/team answer
exactly what they answered before the trim, from the archive in the local directory (the
embedded default: <data dir>/ledger) or in the bucket (moto's S3 server); and the app's own
archiver moves closed days at startup."""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.accounting.archiver import LedgerArchiver
from gateway.accounting.keys import team_prefix
from gateway.accounting.ledger_archive import LedgerArchive
from gateway.app import create_app
from gateway.images.stores import open_archive_blobs
from gateway.redis.client import connect
from gateway.settings import Settings
from tests.api.conftest import admin_headers, wait_for
from tests.ledger_seed import Ledger
from tests.s3_server import CREDENTIALS, S3Server

NOW = calendar.timegm((2026, 11, 2, 12, 0, 0)) * 1000
DAYS = ("2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02")
NO_UPSTREAMS = {"fal": lambda s: None, "local_gpu": lambda s: None}


@pytest.fixture(params=["file", "s3"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Settings for each store: the default (nothing set), or a bucket."""
    if request.param == "file":
        return {}
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server: S3Server = request.getfixturevalue("s3_server")
    return {"image_store": f"s3://{server.new_bucket()}/gw", "s3_endpoint_url": server.url, "s3_region": "us-east-1"}


def _team(client: TestClient) -> tuple[str, dict[str, str]]:
    team = client.post("/admin/teams", json={"name": "archived"}, headers=admin_headers()).json()
    key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    return team["id"], {"Authorization": f"Bearer {key}"}


def _answers(client: TestClient, team_id: str, key: dict[str, str], months: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in months:
        out[f"v1 {m}"] = client.get(f"/v1/usage?month={m}", headers=key).json()
        out[f"admin {m}"] = client.get(f"/admin/usage?month={m}", headers=admin_headers()).json()
        out[f"admin team {m}"] = client.get(f"/admin/usage?month={m}&team_id={team_id}", headers=admin_headers()).json()
        out[f"csv {m}"] = client.get(f"/admin/usage?month={m}&format=csv", headers=admin_headers()).text
        team = client.get(f"/v1/team?month={m}", headers=key).json()
        out[f"team {m}"] = {k: team[k] for k in ("month", "by_provider")}
    return out


def test_usage_the_invoice_and_the_team_page_read_the_same_after_the_trim(
    settings: Settings, where: dict[str, Any]
) -> None:
    settings = settings.model_copy(update={"ledger_archive_interval_s": 0, **where})
    with TestClient(create_app(settings, registry=NO_UPSTREAMS)) as client:
        team_id, key = _team(client)

        async def seed() -> None:
            r = connect(settings.redis_url or "")
            await Ledger(r, (team_id,)).seed(DAYS)
            await r.aclose()

        asyncio.run(seed())
        before = _answers(client, team_id, key, ("2026-10", "2026-11"))
        assert before["csv 2026-10"].count("\n") == 1 + 2 * 13
        assert before["v1 2026-10"]["requests"] == 2 * 12 and before["team 2026-11"]["by_provider"]

        async def archive() -> int:
            r = connect(settings.redis_url or "")

            async def now() -> int:
                return NOW

            try:
                return await LedgerArchiver(r, LedgerArchive(open_archive_blobs(settings)), now_ms=now).run_once()
            finally:
                await r.aclose()

        assert asyncio.run(archive()) == 3
        with redis.Redis.from_url(settings.redis_url or "") as r:
            assert r.xlen(team_prefix(team_id) + "ledger") == 13
        if not where:  # the embedded default: beside the images in the data dir
            assert sorted(p.name for p in (settings.data_dir / "ledger" / team_id / "2026-10").iterdir()) == [
                "2026-10-30.jsonl.gz", "2026-10-30.manifest.json", "2026-10-31.jsonl.gz", "2026-10-31.manifest.json",
            ]  # fmt: skip
        assert _answers(client, team_id, key, ("2026-10", "2026-11")) == before


@pytest.fixture
def stale_team(settings: Settings) -> Iterator[tuple[str, dict[str, Any]]]:
    """A team whose ledger holds two closed days (40 and 2 days ago) and today, and the answers
    about them from an app that does not archive."""
    today = datetime.now(UTC).date()
    days = tuple(str(today - timedelta(days=n)) for n in (40, 2, 0))
    months = tuple(sorted({d[:7] for d in days}))
    with TestClient(create_app(settings.model_copy(update={"ledger_archive_interval_s": 0}), NO_UPSTREAMS)) as c:
        team_id, key = _team(c)

        async def seed() -> None:
            r = connect(settings.redis_url or "")
            # today's events an hour ago at most, so that none lies ahead of Redis's clock
            ledger = Ledger(r, (team_id,))
            await ledger.seed(days[:2])
            for i in range(3):
                await ledger.settle(team_id, int(time.time() * 1000) - 3_600_000 + i)
            assert await r.xlen(team_prefix(team_id) + "ledger") == 2 * 13 + 3
            await r.aclose()

        asyncio.run(seed())
        yield team_id, {"key": key, "months": months, "before": _answers(c, team_id, key, months)}


def test_the_apps_own_archiver_moves_closed_days_into_the_data_dir_at_startup(
    settings: Settings, stale_team: tuple[str, dict[str, Any]]
) -> None:
    team_id, seen = stale_team
    stream = team_prefix(team_id) + "ledger"
    with redis.Redis.from_url(settings.redis_url or "") as r, TestClient(create_app(settings, NO_UPSTREAMS)) as client:
        wait_for(lambda: r.xlen(stream) == 3, "the closed days to leave Redis")  # 2 * 13 + 3 before
        assert len(list((settings.data_dir / "ledger" / team_id).rglob("*.manifest.json"))) == 2
        assert _answers(client, team_id, seen["key"], seen["months"]) == seen["before"]
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {settings.metrics_token}"}).text
        assert "gateway_ledger_archived_days_total 2.0" in metrics
