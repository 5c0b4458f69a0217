"""The circuit breaker is shared: failures seen by one gateway process open the route for another
process too, which then stops sending it traffic without trying it first."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.server import free_port
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import RunningWorker, running_worker
from tests.processes import Process, python
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def worker() -> Iterator[RunningWorker]:
    with running_worker("full", max_queue=4, pipeline=StandInPipeline(step_s=0.001)) as w:
        yield w


def test_breaker_opened_by_one_gateway_process_holds_for_another(
    redis_server: RedisServer, worker: RunningWorker, tmp_path: Path
) -> None:
    redis_server.flush()
    fal_key = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}"
    admin_key = "adm-" + secrets.token_hex(8)
    metrics_token = "met-" + secrets.token_hex(8)
    fal_port = free_port()
    procs = [
        Process(
            "fake-fal",
            python("tests.fakes.fal_server", "--port", str(fal_port), "--key", fal_key, "--inference-s", "0.02"),
            {},
            tmp_path / "fal.log",
        )
    ]
    bases = []
    try:
        procs[0].wait_http(f"http://127.0.0.1:{fal_port}/_fake/stats")
        for i in range(2):
            port = free_port()
            env = {
                "GATEWAY_REDIS_URL": redis_server.url,
                "GATEWAY_ADMIN_KEY": admin_key,
                "GATEWAY_METRICS_TOKEN": metrics_token,
                "GATEWAY_FAL_KEY": fal_key,
                "GATEWAY_FAL_QUEUE_URL": f"http://127.0.0.1:{fal_port}",
                "GATEWAY_FAL_POLL_INITIAL_S": "0.02",
                "GATEWAY_LOCAL_GPU_URLS": worker.url,
                "GATEWAY_PROBE_INTERVAL_S": "0.2",
                "GATEWAY_DATA_DIR": str(tmp_path / f"data{i}"),
            }
            procs.append(
                Process(f"gw{i}", python("gateway.cli", "serve", "--port", str(port)), env, tmp_path / f"gw{i}.log")
            )
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base in zip(procs[1:], bases, strict=True):
            proc.wait_http(base + "/ready", timeout_s=60)
        admin = {"Authorization": f"Bearer {admin_key}"}
        team = httpx.post(bases[0] + "/admin/teams", json={"name": "b"}, headers=admin).json()
        key = httpx.post(f"{bases[0]}/admin/teams/{team['id']}/keys", headers=admin).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        body = {"model": "hidream-i1-full", "prompt": "x", "num_inference_steps": 1}

        def generate(base: str) -> httpx.Response:
            r = httpx.post(base + "/v1/images/generations", json=body, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            return r

        assert generate(bases[1]).headers["x-gateway-provider"] == "local_gpu"
        worker.pipeline.plan("fail", count=5)
        for _ in range(5):  # only gateway 0 sees the worker fail
            assert generate(bases[0]).headers["x-gateway-route-reason"] == "fallback_after_error"
        # the other process sees the shared state once its short read cache (0.5 s) expires;
        # its next probe round exports it
        wanted = 'gateway_breaker_state{model="hidream-i1-full",provider="local_gpu"} 2.0'
        scrape = {"Authorization": f"Bearer {metrics_token}"}
        deadline = time.monotonic() + 10
        while wanted not in httpx.get(bases[1] + "/metrics", headers=scrape).text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert wanted in httpx.get(bases[1] + "/metrics", headers=scrape).text
        started = worker.jobs_started()
        r = generate(bases[1])
        assert (r.headers["x-gateway-provider"], r.headers["x-gateway-route-reason"]) == ("fal", "failover_unhealthy")
        assert worker.jobs_started() == started
    finally:
        for proc in reversed(procs):
            proc.stop()
