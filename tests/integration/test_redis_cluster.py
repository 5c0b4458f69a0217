"""The gateway's Redis scripts on a real three-node Redis Cluster on loopback, through the same
`redis+cluster://` URL the gateway is given: keys, admission/settlement/idempotency, route health,
the budget gauges, and one request end to end through a `gateway serve` process."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.asyncio import RedisCluster

from gateway.accounting.archiver import LOCK, LedgerArchiver
from gateway.accounting.billing_metrics import BillingMetrics
from gateway.accounting.keys import KeyStore, TeamLimits, team_prefix
from gateway.accounting.ledger_archive import LedgerArchive, day_bounds_ms
from gateway.accounting.metering import Admission, Idempotency, Meter, Replay, Settlement, StillRunning
from gateway.accounting.usage import ARCHIVED_THROUGH, ledger_lines, month_usage, parse_month
from gateway.errors import InvalidRequestError, QuotaExceededError, RateLimitError
from gateway.images.blobs import FileBlobs
from gateway.metrics import Metrics
from gateway.redis.client import RedisClient, connect
from gateway.routing.breaker import BreakerConfig, RouteHealth, route_key
from tests.fakes.server import free_port
from tests.fakes.worker_server import running_worker
from tests.ledger_seed import Ledger
from tests.processes import Process, python
from tests.redis_cluster import RedisClusterServer

pytestmark = pytest.mark.slow

PRICE = 50_000  # hidream-i1-full, micro-USD per image
LIMITS = TeamLimits(requests_per_minute=1000, images_per_minute=1000, max_in_flight=100)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    server = RedisClusterServer(tmp_path_factory.mktemp("cluster"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(cluster: RedisClusterServer) -> AsyncIterator[RedisClient]:
    c = connect(cluster.url)
    yield c
    await c.aclose()


async def _teams_on_two_nodes(cluster: RedisClusterServer, keys: KeyStore, limits: TeamLimits) -> list[str]:
    """Teams until at least two cluster nodes hold one, so the scripts run on several nodes."""
    teams: list[str] = []
    while len({cluster.node_of(team_prefix(t) + "team") for t in teams}) < 2:
        teams.append((await keys.create_team(f"t{len(teams)}", 1.0, limits)).id)
    return teams


async def test_the_client_is_a_cluster_client_and_every_node_is_a_primary(
    cluster: RedisClusterServer, client: RedisClient
) -> None:
    assert isinstance(client, RedisCluster)
    await client.initialize()
    nodes = {n.port for n in client.get_primaries()}
    assert nodes == set(cluster.ports)


async def test_keys_are_created_authenticated_listed_and_revoked(
    cluster: RedisClusterServer, client: RedisClient
) -> None:
    keys = KeyStore(client)
    team = await keys.create_team("design", 10.0, LIMITS)
    key, plain = await keys.create_key(team.id, "ci")
    principal = await keys.authenticate(plain)
    assert principal is not None and (principal.team_id, principal.key_id) == (team.id, key.id)
    assert [k.id for k in await keys.list_keys(team.id)] == [key.id]
    assert team.id in {t.id for t in await keys.list_teams()}
    assert await keys.revoke_key(key.id)
    assert await keys.authenticate(plain) is None
    assert await keys.list_keys(team.id) == []


async def test_admission_settlement_and_idempotency_on_teams_held_by_different_nodes(
    cluster: RedisClusterServer, client: RedisClient
) -> None:
    keys, meter = KeyStore(client), Meter(client)
    teams = await _teams_on_two_nodes(cluster, keys, TeamLimits(3, 100, 10))
    month = parse_month(None)
    for team_id in teams[-2:]:
        idem = Idempotency("retry-me", "ab" * 16)
        first = await meter.admit(team_id, "req_a", 2, 2 * PRICE, hold_s=60, idempotency=idem)
        assert isinstance(first, Admission)
        again = await meter.admit(team_id, "req_b", 2, 2 * PRICE, hold_s=60, idempotency=idem)
        assert again == StillRunning("req_a")
        charged = await meter.settle(first, Settlement("succeeded", 2, 2 * PRICE, 28_000, "hidream-i1-full", (),
                                                       replay='{"body": "kept"}'))  # fmt: skip
        assert charged == 2 * PRICE
        assert await meter.settle(first, Settlement("succeeded", 2, 2 * PRICE, 28_000, "hidream-i1-full")) is None
        assert await meter.admit(team_id, "req_c", 2, 2 * PRICE, hold_s=60, idempotency=idem) == Replay(
            '{"body": "kept"}'
        )
        with pytest.raises(InvalidRequestError):
            await meter.admit(team_id, "req_d", 1, PRICE, hold_s=60, idempotency=Idempotency("retry-me", "cd" * 16))

        failed = await meter.admit(team_id, "req_e", 1, PRICE, hold_s=60)
        assert isinstance(failed, Admission)
        await meter.settle(failed, Settlement("failed", 0, 0, 0, "hidream-i1-full"))

        # Third request in the minute (replays and refusals are not counted): the limit of 3.
        last = await meter.admit(team_id, "req_f", 1, PRICE, hold_s=60)
        assert isinstance(last, Admission)
        with pytest.raises(RateLimitError):
            await meter.admit(team_id, "req_g", 1, PRICE, hold_s=60)
        await meter.settle(last, Settlement("succeeded", 1, PRICE, 14_000, "hidream-i1-full"))

        usage = await month_usage(client, team_id, month)
        assert (usage.requests, usage.failed, usage.images) == (3, 1, 3)
        assert (usage.spent_micros, usage.reserved_micros, usage.provider_cost_micros) == (3 * PRICE, 0, 42_000)
        lines = await ledger_lines(client, team_id, month)
        assert [(line["request_id"], line["status"]) for line in lines] == [
            ("req_a", "succeeded"), ("req_e", "failed"), ("req_f", "succeeded"),
        ]  # fmt: skip


async def test_the_ledger_archiver_moves_closed_days_of_teams_on_several_nodes(
    cluster: RedisClusterServer, client: RedisClient, tmp_path: Path
) -> None:
    teams = await _teams_on_two_nodes(cluster, KeyStore(client), LIMITS)
    ledger = Ledger(client, tuple(teams), ("2026-10",))
    await ledger.seed(("2026-10-30", "2026-10-31"))
    archive = LedgerArchive(FileBlobs(tmp_path))
    before = await ledger.reads(archive)

    async def next_day() -> int:  # 2026-11-01 12:00 UTC
        return day_bounds_ms("2026-11-01")[0] + 12 * 3_600_000

    # The lease, the teams' set, each team's trim and archived-through day: single-slot calls.
    assert await LedgerArchiver(client, archive, now_ms=next_day).run_once() == 2 * len(teams)
    for team_id in teams:
        assert await client.xlen(team_prefix(team_id) + "ledger") == 0
        assert await client.get(team_prefix(team_id) + ARCHIVED_THROUGH) == b"2026-10-31"
    assert await ledger.reads(archive) == before
    assert await client.get(LOCK) is None


async def test_budget_is_enforced_on_a_cluster(client: RedisClient) -> None:
    keys, meter = KeyStore(client), Meter(client)
    team = await keys.create_team("small", 0.1, LIMITS)
    held = await meter.admit(team.id, "req_1", 2, 2 * PRICE, hold_s=60)
    assert isinstance(held, Admission)
    with pytest.raises(QuotaExceededError):
        await meter.admit(team.id, "req_2", 1, PRICE, hold_s=60)
    await meter.settle(held, Settlement("failed", 0, 0, 0, "hidream-i1-full"))  # refunded
    assert isinstance(await meter.admit(team.id, "req_3", 1, PRICE, hold_s=60), Admission)


async def test_route_health_opens_grants_one_trial_and_closes_on_a_cluster(
    cluster: RedisClusterServer, client: RedisClient
) -> None:
    config = BreakerConfig(consecutive_failures=3, cooldown_s=0, trial_s=60)
    other = connect(cluster.url)  # a second gateway process
    a, b = RouteHealth(client, config, cache_s=0), RouteHealth(other, config, cache_s=0)
    routes = [("fal", "hidream-i1-full"), ("local_gpu", "hidream-i1-full"), ("fal", "hidream-i1-fast")]
    assert len({cluster.node_of(route_key(p, m) + "state") for p, m in routes}) >= 2
    try:
        await _open_trial_close(a, b, routes)
    finally:
        await other.aclose()


async def _open_trial_close(a: RouteHealth, b: RouteHealth, routes: list[tuple[str, str]]) -> None:
    for provider, model in routes:
        assert await a.record(provider, model, True, 0.8) == "closed"
        states = [await b.record(provider, model, False, None) for _ in range(3)]
        assert states == ["closed", "closed", "open"]
        assert (await a.stats([(provider, model)]))[(provider, model)].state == "open"
        grants = [await h.try_trial(provider, model) for h in (a, b, a)]
        assert grants == ["trial", "open", "open"]
        assert await b.record(provider, model, True, 1.2) == "closed"
        stats = (await a.stats([(provider, model)]))[(provider, model)]
        assert stats.state == "closed" and stats.samples == 2 and stats.ewma_s is not None


async def test_budget_gauges_read_every_team_across_nodes(cluster: RedisClusterServer, client: RedisClient) -> None:
    keys, metrics = KeyStore(client), Metrics()
    teams = await _teams_on_two_nodes(cluster, keys, LIMITS)
    await BillingMetrics(client, metrics).refresh()
    assert metrics.registry.get_sample_value("gateway_redis_up") == 1
    for team_id in teams:
        assert metrics.registry.get_sample_value("gateway_team_budget_usd", {"team": team_id}) == 1.0


def test_a_request_through_a_gateway_process_on_the_cluster(cluster: RedisClusterServer, tmp_path: Path) -> None:
    admin_key = "adm-" + secrets.token_hex(8)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_worker("full") as worker:
        env = {
            "GATEWAY_REDIS_URL": cluster.url,
            "GATEWAY_ADMIN_KEY": admin_key,
            "GATEWAY_LOCAL_GPU_URLS": worker.url,
            "GATEWAY_DATA_DIR": str(tmp_path / "data"),
            "GATEWAY_PUBLIC_URL": base,
            "GATEWAY_PROBE_INTERVAL_S": "0.2",
        }
        gateway = Process(
            "gateway", python("gateway.cli", "serve", "--port", str(port), "--workers", "2"), env, tmp_path / "gw.log"
        )
        try:
            gateway.wait_http(base + "/ready")
            with httpx.Client(base_url=base, timeout=30) as http:
                admin = {"Authorization": f"Bearer {admin_key}"}
                team = http.post("/admin/teams", json={"name": "cluster"}, headers=admin).json()
                key = http.post(f"/admin/teams/{team['id']}/keys", headers=admin).json()["key"]
                resp = http.post(
                    "/v1/images/generations",
                    json={"model": "hidream-i1-full", "prompt": "a lighthouse", "n": 2, "response_format": "url"},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-gateway-provider"] == "local_gpu"
                assert http.get(resp.json()["data"][0]["url"]).status_code == 200
                usage = http.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
                assert (usage["images"], usage["spent_usd"]) == (2, 0.1)
        finally:
            gateway.stop()
    direct = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        events = [f for _, f in direct.xrange(team_prefix(team["id"]) + "ledger")]
    finally:
        direct.close()
    assert [(e[b"status"], int(e[b"charged_micros"]), e[b"provider"]) for e in events] == [
        (b"succeeded", 2 * PRICE, b"local_gpu")
    ]


async def test_a_burst_past_the_connection_pool_waits_for_connections_instead_of_failing(
    cluster: RedisClusterServer,
) -> None:
    # 300 admissions at once for one team, whose keys are one node's: past that node's 16
    # connections they wait (redis-py's own cluster pool refused them: MaxConnectionsError).
    client = connect(cluster.url, max_connections=16)
    try:
        meter = Meter(client)
        team = (await KeyStore(client).create_team("burst", 1e6, TeamLimits(100_000, 100_000, 10_000))).id
        got = await asyncio.gather(
            *(meter.admit(team, f"req_{i}", 1, PRICE, 360) for i in range(300)), return_exceptions=True
        )
        assert [g for g in got if not isinstance(g, Admission)] == []
        async with client.pipeline(transaction=False) as pipe:  # a pipeline waits its turn too
            for _ in range(3):
                pipe.exists(team_prefix(team) + "team")
            assert await pipe.execute() == [1, 1, 1]
        assert isinstance(client, RedisCluster)
        connections = sum(len(node._connections) for node in client.get_nodes())
        assert connections <= 16 * len(client.get_nodes())
    finally:
        await client.aclose()
