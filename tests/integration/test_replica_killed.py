"""A gateway replica SIGKILLed mid-load beside a second one: the survivor keeps serving, and the
ledger charges exactly the answers callers got from it, once each; nothing is charged for a
request whose connection died with the killed replica (its reservation is released uncharged when
it expires, or here at once by the next admission past its deadline)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from gateway.accounting.keys import team_prefix
from tests.integration.replicas import Cluster, running_cluster

pytestmark = pytest.mark.slow

PRICE = 50_000  # hidream-i1-full, micro-USD per image


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # fal takes a second an image, so requests are in flight on both replicas when one dies.
    with running_cluster(tmp_path_factory.mktemp("killed"), fal_inference_s=1.0) as made:
        yield made


async def _load(cluster: Cluster, key: str, count: int, kill_after_s: float) -> list[tuple[int, int, str]]:
    """(replica, status, request id) per request; status 0 when the connection died."""

    async def one(i: int, client: httpx.AsyncClient) -> tuple[int, int, str]:
        await asyncio.sleep(0.02 * i)
        replica = i % 2
        try:
            r = await client.post(
                cluster.bases[replica] + "/v1/images/generations",
                json={"model": "hidream-i1-full", "prompt": f"load {i}", "response_format": "url"},
                headers={"Authorization": f"Bearer {key}"},
            )
        except httpx.TransportError:
            return replica, 0, ""
        return replica, r.status_code, r.headers["x-request-id"]

    async def kill() -> None:
        await asyncio.sleep(kill_after_s)
        os.killpg(cluster.processes[0].proc.pid, signal.SIGKILL)  # the server and its workers, at once

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count + 10)) as client:
        killer = asyncio.create_task(kill())
        outcomes = await asyncio.gather(*(one(i, client) for i in range(count)))
        await killer
    return list(outcomes)


def test_a_replica_killed_mid_load_loses_no_answer_and_charges_none_twice(cluster: Cluster) -> None:
    team_id, key = cluster.team("killed")
    outcomes = asyncio.run(_load(cluster, key, 40, kill_after_s=0.6))
    survivor = [rid for replica, status, rid in outcomes if replica == 1 and status == 200]
    from_killed = [status for replica, status, _ in outcomes if replica == 0]
    assert len(survivor) == 20, "the surviving replica must serve every request sent to it"
    assert 0 in from_killed, "the kill came too late to catch requests in flight"
    answered = {rid for _, status, rid in outcomes if status == 200}
    deadline = time.monotonic() + 20
    with redis.Redis.from_url(cluster.redis.url) as r:
        while True:
            events = [f for _, f in r.xrange(team_prefix(team_id) + "ledger")]
            charged = [e[b"request_id"].decode() for e in events if e[b"status"] == b"succeeded"]
            if set(survivor) <= set(charged) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        pending = r.hlen(team_prefix(team_id) + "res")
    assert len(charged) == len(set(charged)), "a request was charged twice"
    assert set(survivor) <= set(charged) <= answered, "charged only what a caller got, every answer of the survivor"
    assert sum(int(e[b"charged_micros"]) for e in events) == len(charged) * PRICE
    # The killed replica's requests in flight hold reservations until their deadline passes; they
    # are released uncharged then (tested in test_metering_redis), never settled as served.
    cut = sum(1 for status in from_killed if status == 0)
    assert pending <= cut
