"""Limits, budgets and metering across replicas: two gateway processes with two workers each on
one real redis-server, hit concurrently past every limit through both of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from gateway.accounting.keys import team_prefix
from tests.integration.replicas import Cluster, running_cluster

pytestmark = pytest.mark.slow

PRICE = 50_000  # hidream-i1-full, micro-USD per image


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("replicas")) as made:
        yield made


@dataclass
class Outcome:
    status: int
    request_id: str
    images: int
    headers: httpx.Headers
    body: dict[str, object]


async def _fire(cluster: Cluster, key: str, count: int, *, n: int = 1, spread_s: float = 0.0) -> list[Outcome]:
    """`count` requests at once (or spread over spread_s), alternating between the replicas."""

    async def one(i: int, client: httpx.AsyncClient) -> Outcome:
        if spread_s:
            await asyncio.sleep(spread_s * i / count)
        r = await client.post(
            cluster.bases[i % len(cluster.bases)] + "/v1/images/generations",
            json={"model": "hidream-i1-full", "prompt": f"load {i}", "n": n, "response_format": "url"},
            headers={"Authorization": f"Bearer {key}"},
        )
        images = len(r.json()["data"]) if r.status_code == 200 else 0
        return Outcome(r.status_code, r.headers["x-request-id"], images, r.headers, r.json())

    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(one(i, client) for i in range(count))))


def _ledger(cluster: Cluster, team_id: str) -> list[dict[bytes, bytes]]:
    r = redis.Redis.from_url(cluster.redis.url)
    try:
        return [f for _, f in r.xrange(team_prefix(team_id) + "ledger")]
    finally:
        r.close()


def _check_ledger_matches_served(cluster: Cluster, team_id: str, outcomes: list[Outcome]) -> None:
    """Once every answered request is settled (settlement runs after the answer is handed over, and
    a spooled one when Redis is back; 20 s at most), the ledger holds exactly the served images."""
    served = {o.request_id: o.images for o in outcomes if o.status == 200}
    deadline = time.monotonic() + 20
    while True:
        events = [e for e in _ledger(cluster, team_id) if e[b"status"] == b"succeeded"]
        if set(served) <= {e[b"request_id"].decode() for e in events} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    charged = {e[b"request_id"].decode(): int(e[b"charged_micros"]) for e in events}
    assert len(events) == len(charged), "a request was settled twice"
    assert set(charged) == set(served)
    ledger_total = sum(charged.values())
    served_total = sum(served.values()) * PRICE
    assert ledger_total - served_total == 0


def test_requests_per_minute_is_exact_across_replicas(cluster: Cluster) -> None:
    team_id, key = cluster.team("rpm", rpm=20)
    outcomes = asyncio.run(_fire(cluster, key, 60))
    ok = [o for o in outcomes if o.status == 200]
    limited = [o for o in outcomes if o.status == 429]
    assert len(ok) == 20, f"over-admission: {len(ok) - 20}"
    assert len(limited) == 40
    assert all(o.headers["x-ratelimit-limit-requests"] == "20" and int(o.headers["retry-after"]) >= 1 for o in limited)
    _check_ledger_matches_served(cluster, team_id, outcomes)


def test_images_per_minute_counts_images_across_replicas(cluster: Cluster) -> None:
    team_id, key = cluster.team("ipm", ipm=10)
    outcomes = asyncio.run(_fire(cluster, key, 12, n=2))
    served = sum(o.images for o in outcomes)
    assert served == 10, f"over-admission: {served - 10} images"
    _check_ledger_matches_served(cluster, team_id, outcomes)


def test_in_flight_limit_holds_across_replicas(cluster: Cluster) -> None:
    team_id, key = cluster.team("inflight", inflight=3)
    outcomes = asyncio.run(_fire(cluster, key, 16))
    ok = [o for o in outcomes if o.status == 200]
    # All 16 arrive within a few ms while each generation takes 0.3 s: at most 3 can be running.
    assert 1 <= len(ok) <= 3
    assert all(o.status in (200, 429) for o in outcomes)
    _check_ledger_matches_served(cluster, team_id, outcomes)


def test_budget_is_never_exceeded_by_concurrent_requests(cluster: Cluster) -> None:
    team_id, key = cluster.team("budget", budget=0.50)
    outcomes = asyncio.run(_fire(cluster, key, 40))
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    assert len(ok) == 10, f"over-admission: {len(ok) - 10}"
    assert len(refused) == 30
    assert all(o.headers["x-should-retry"] == "false" for o in refused)
    assert all(o.body["error"]["code"] == "insufficient_quota" for o in refused)  # type: ignore[index]
    with httpx.Client() as c:
        usage = c.get(cluster.bases[1] + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    assert usage["spent_usd"] == 0.5 and usage["images"] == 10 and usage["reserved_usd"] == 0
    _check_ledger_matches_served(cluster, team_id, outcomes)


def test_idempotent_retries_through_both_replicas_are_charged_once(cluster: Cluster) -> None:
    team_id, key = cluster.team("idem")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-7731"}
    body = {"model": "hidream-i1-full", "prompt": "once", "n": 2}

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(cluster.bases[i % 2] + "/v1/images/generations", json=body, headers=headers)
                        for i in range(6)
                    )
                )
            )

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 6
    # The same images (a replay signs their URLs anew, so compare the images' paths).
    images = {tuple(d["url"].split("?")[0] for d in r.json()["data"]) for r in responses}
    assert len(images) == 1, "a retry produced different images"
    assert sum(r.headers["x-gateway-charged-usd"] != "0.000000" for r in responses) == 1
    events = _ledger(cluster, team_id)
    assert len(events) == 1 and int(events[0][b"charged_micros"]) == 2 * PRICE
    with httpx.Client() as c:
        again = c.post(cluster.bases[0] + "/v1/images/generations", json={**body, "n": 1}, headers=headers)
    assert again.status_code == 400 and again.json()["error"]["param"] == "Idempotency-Key"


def test_a_team_sees_only_its_own_usage(cluster: Cluster) -> None:
    a_id, a_key = cluster.team("team-a")
    b_id, b_key = cluster.team("team-b")
    asyncio.run(_fire(cluster, a_key, 2))
    with httpx.Client() as c:
        b_usage = c.get(cluster.bases[0] + "/v1/usage", headers={"Authorization": f"Bearer {b_key}"}).json()
        assert b_usage["team_id"] == b_id and b_usage["images"] == 0 and b_usage["spent_usd"] == 0
        a_usage = c.get(cluster.bases[1] + "/v1/usage", headers={"Authorization": f"Bearer {a_key}"}).json()
        assert a_usage["team_id"] == a_id and a_usage["images"] == 2
        # the team API takes no team id: a team key cannot reach the admin usage export
        r = c.get(
            cluster.bases[0] + "/admin/usage", params={"team_id": a_id}, headers={"Authorization": f"Bearer {b_key}"}
        )
        assert r.status_code == 401


def test_killing_redis_mid_load_loses_no_recorded_event(cluster: Cluster) -> None:
    team_id, key = cluster.team("outage")
    before = asyncio.run(_fire(cluster, key, 10))
    recorded_before = {e[b"request_id"] for e in _ledger(cluster, team_id)}
    assert len(recorded_before) == 10

    async def load_with_outage() -> list[Outcome]:
        load = asyncio.create_task(_fire(cluster, key, 60, spread_s=3.0))
        await asyncio.sleep(1.0)
        cluster.redis.kill()
        await asyncio.sleep(1.0)
        cluster.redis.start()
        return await load

    during = asyncio.run(load_with_outage())
    statuses = {o.status for o in during}
    assert statuses <= {200, 503}, statuses
    assert 503 in statuses and 200 in statuses
    # spooled settlements are replayed within a few seconds of Redis returning
    outcomes = before + during
    _check_ledger_matches_served(cluster, team_id, outcomes)
    assert recorded_before <= {e[b"request_id"] for e in _ledger(cluster, team_id)}


def test_failed_admin_keys_are_counted_once_across_replicas_and_their_processes(cluster: Cluster) -> None:
    """Guesses spread over both replicas (two worker processes each) share one count per address:
    the 11th is refused wherever it lands. From 127.0.0.2, so the other tests' address is untouched."""
    wrong = {"Authorization": "Bearer adm-guess"}
    right = {"Authorization": f"Bearer {cluster.admin_key}"}

    def guesser() -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)

    statuses = []
    for i in range(10):
        with guesser() as c:  # a new connection each time: any worker process may take it
            statuses.append(c.get(cluster.bases[i % 2] + "/admin/teams", headers=wrong).status_code)
    assert statuses == [401] * 10
    with guesser() as c:
        for base in cluster.bases:
            for headers in (wrong, right):
                r = c.get(base + "/admin/teams", headers=headers)
                assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60, r.text
    with httpx.Client(timeout=30) as c:  # from 127.0.0.1, the admin key works as ever
        assert c.get(cluster.bases[1] + "/admin/teams", headers=right).status_code == 200
