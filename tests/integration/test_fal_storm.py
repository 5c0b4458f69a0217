"""Fault matrix: fal failing under load (5xx storms at its ingress and in its runners, garbage
results, 429s) behind two gateway replicas, then recovering. Whatever fails, the ledger charges
exactly the answers callers got, once each, and every failure is an OpenAI-shaped 5xx or 429
charged nothing; once the storm is over, the breakers let traffic back (fal is the only route)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from gateway.accounting.keys import team_prefix
from tests.integration.replicas import Cluster, running_cluster

pytestmark = pytest.mark.slow

PRICE = 50_000  # hidream-i1-full, micro-USD per image
STORM = {"ingress_502": 6, "ingress_503": 6, "unavailable": 6, "completed_with_error": 4, "garbage": 4,
         "generation_timeout": 3, "rate_limited": 4}  # fmt: skip


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("storm"), fal_inference_s=0.1) as made:
        yield made


async def _load(cluster: Cluster, key: str, count: int) -> list[tuple[int, str, dict[str, object]]]:
    async def one(i: int, client: httpx.AsyncClient) -> tuple[int, str, dict[str, object]]:
        await asyncio.sleep(0.01 * i)
        r = await client.post(
            cluster.bases[i % 2] + "/v1/images/generations",
            json={"model": "hidream-i1-full", "prompt": f"storm {i}", "response_format": "b64_json"},
            headers={"Authorization": f"Bearer {key}"},
        )
        return r.status_code, r.headers["x-request-id"], r.json()

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=count + 10)) as client:
        return list(await asyncio.gather(*(one(i, client) for i in range(count))))


def test_a_fal_storm_charges_exactly_the_answers_served(cluster: Cluster) -> None:
    team_id, key = cluster.team("storm")
    for fault, count in STORM.items():
        httpx.post(cluster.fal + "/_fake/faults", json={"fault": fault, "count": count}).raise_for_status()
    outcomes = asyncio.run(_load(cluster, key, 40))
    assert any(status != 200 for status, _, _ in outcomes), "the storm should fail requests"
    httpx.delete(cluster.fal + "/_fake/faults").raise_for_status()  # the storm is over
    deadline = time.monotonic() + 60
    while not any(status == 200 for status, _, _ in outcomes[-20:]):  # the breakers' cool-down, then trials
        assert time.monotonic() < deadline, "traffic never came back after the storm"
        time.sleep(1)
        outcomes += asyncio.run(_load(cluster, key, 20))
    served = {rid for status, rid, _ in outcomes if status == 200}
    failed = [(status, body) for status, _, body in outcomes if status != 200]
    for status, body in failed:
        assert status in (429, 502, 503, 504), (status, body)
        error = body["error"]
        assert isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)
    deadline = time.monotonic() + 20
    with redis.Redis.from_url(cluster.redis.url) as r:
        while True:
            events = [f for _, f in r.xrange(team_prefix(team_id) + "ledger")]
            charged = [e[b"request_id"].decode() for e in events if int(e[b"charged_micros"]) > 0]
            if set(served) <= set(charged) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        pending = r.hlen(team_prefix(team_id) + "res")
    assert len(charged) == len(set(charged)) and set(charged) == served
    assert sum(int(e[b"charged_micros"]) for e in events) == len(served) * PRICE
    assert pending == 0  # every admitted request settled, failed ones included
