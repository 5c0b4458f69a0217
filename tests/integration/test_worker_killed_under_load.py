"""Fault matrix: a GPU worker SIGKILLed under load. A dozen callers keep requests in flight to a
worker process (the real worker app, one job at a time, four waiting) through `gateway serve`, and
the worker dies mid-way. The jobs it held fail over to fal or end in an OpenAI-shaped 5xx charged
nothing; the gateway stops trying the dead worker; the ledger charges each answer served once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.accounting.keys import team_prefix
from tests.fakes.server import free_port
from tests.integration.gateway_stack import Stack, running_stack
from tests.processes import Process, python
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

PRICE = 50_000  # hidream-i1-full, micro-USD per image
LIMITS = {"requests_per_minute": 10_000, "images_per_minute": 10_000, "max_in_flight": 1000}
CALLERS = 12
Outcome = tuple[int, str, str, dict[str, object]]  # status, request id, provider, body


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Stack, Process, str]]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    port = free_port()
    worker_url = f"http://127.0.0.1:{port}"
    # 50 steps of 20 ms: a job takes a second, so the worker always holds some when it dies.
    worker = Process("worker", python("bench.fake_worker", "--port", str(port), "--step-s", "0.02"), {},
                     tmp_path / "worker.log")  # fmt: skip
    # A long cool-down: no half-open trial of the dead worker during the test (it would fail over, but count).
    env = {"GATEWAY_LOCAL_GPU_URLS": worker_url, "GATEWAY_PROBE_INTERVAL_S": "0.5", "GATEWAY_BREAKER_COOLDOWN_S": "300"}
    try:
        worker.wait_http(worker_url + "/ready")
        with running_stack(server, tmp_path, team={"limits": LIMITS}, gateway_env=env) as stack:
            yield stack, worker, worker_url
    finally:
        worker.stop()
        server.stop()


async def _callers(stack: Stack, seconds: float, kill: asyncio.Event | None = None) -> list[Outcome]:
    """CALLERS callers, each sending one request after another for `seconds`."""
    out: list[Outcome] = []

    async def caller(i: int, client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            r = await client.post(
                "/v1/images/generations",
                json={"model": "hidream-i1-full", "prompt": f"load {i}", "response_format": "b64_json"},
            )
            out.append((r.status_code, r.headers["x-request-id"], r.headers.get("x-gateway-provider", ""), r.json()))

    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.base, headers=headers, timeout=120) as client:
        until = time.monotonic() + seconds
        await asyncio.gather(*(caller(i, client, until) for i in range(CALLERS)))
    return out


def _local_gpu_failures(stack: Stack) -> float:
    """gateway_upstream_errors_total for local_gpu, summed over kinds and processes."""
    text = httpx.get(stack.base + "/metrics", headers={"Authorization": f"Bearer {stack.metrics_token}"}).text
    pattern = r'^gateway_upstream_errors_total\{[^}]*provider="local_gpu"[^}]*\} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_a_worker_killed_under_load_loses_nothing_and_charges_each_answer_once(
    world: tuple[Stack, Process, str],
) -> None:
    stack, worker, worker_url = world

    async def load_and_kill() -> tuple[list[Outcome], dict[str, object]]:
        loading = asyncio.ensure_future(_callers(stack, 8.0))
        await asyncio.sleep(3.0)
        async with httpx.AsyncClient() as client:
            held = (await client.get(worker_url + "/ready")).json()
        os.killpg(worker.proc.pid, signal.SIGKILL)
        return await loading, held

    outcomes, held = asyncio.run(load_and_kill())
    assert held["in_flight"] >= 1 and held["queue_depth"] >= 1, held  # jobs were on the worker when it died
    providers = {p for status, _, p, _ in outcomes if status == 200}
    assert providers == {"local_gpu", "fal"}, providers  # the worker served, then fal took over
    for status, _, _, body in outcomes:
        if status != 200:
            assert status in (502, 503, 504), (status, body)
            error = body["error"]
            assert isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)

    # The dead worker is no longer tried: later requests go to fal and no attempt fails on it.
    failures_before = _local_gpu_failures(stack)
    after = asyncio.run(_callers(stack, 2.0))
    assert after and all(status == 200 and p == "fal" for status, _, p, _ in after), after[:3]
    assert _local_gpu_failures(stack) == failures_before

    served = {rid for status, rid, _, _ in outcomes + after if status == 200}
    refused = {rid for status, rid, _, _ in outcomes + after if status != 200}
    deadline = time.monotonic() + 20
    with redis.Redis.from_url(stack.redis_url) as r:
        while True:
            events = [f for _, f in r.xrange(team_prefix(stack.team_id) + "ledger")]
            charged = [e[b"request_id"].decode() for e in events if int(e[b"charged_micros"]) > 0]
            pending = r.hlen(team_prefix(stack.team_id) + "res")
            if (pending == 0 and served <= set(charged)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(charged) == len(set(charged)) and set(charged) == served
    assert not refused & set(charged)
    assert sum(int(e[b"charged_micros"]) for e in events) == len(served) * PRICE
    assert pending == 0
