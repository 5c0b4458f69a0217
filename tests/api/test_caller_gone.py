"""A caller that leaves while its image is being made, over a real socket to the gateway's own
HTTP protocol: the server tells the request it is gone (server.ON_DISCONNECT), which cancels the
worker's job, and the request is charged nothing."""

from __future__ import annotations

import json

import httpx
import redis

from gateway.accounting.keys import team_prefix
from gateway.api.server import HttpLimits, http_protocol
from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import admin_headers
from tests.fakes.server import serve_in_thread
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import running_worker, wait_until
from tests.raw_http import connect, request_head


def test_a_caller_that_hangs_up_mid_generation_cancels_the_job_and_pays_nothing(
    settings: Settings, redis_url: str
) -> None:
    pipe = StandInPipeline()
    with running_worker("full", pipeline=pipe) as worker:
        pipe.plan("hold")  # makes its image only once released: the caller leaves first
        settings = settings.model_copy(update={"local_gpu_urls": [worker.url], "probe_interval_s": 0.05})
        app = create_app(settings)
        with serve_in_thread(app, http=http_protocol(HttpLimits.from_settings(settings))) as url:
            with httpx.Client(base_url=url, headers=admin_headers(), timeout=30) as admin:
                team = admin.post("/admin/teams", json={"name": "gone"}).json()
                key = admin.post(f"/admin/teams/{team['id']}/keys").json()["key"]
            body = json.dumps({"model": "hidream-i1-full", "prompt": "leave", "num_inference_steps": 2}).encode()
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            headers["content-length"] = str(len(body))
            sock = connect(url)
            try:
                sock.sendall(request_head("POST", "/v1/images/generations", headers) + body)
                wait_until(pipe.holding.is_set, "the worker to start the job")
            finally:
                sock.close()
            try:
                wait_until(lambda: bool(pipe.calls) and pipe.calls[-1].interrupted, "the job to be interrupted")
            finally:
                pipe.release.set()
            client = redis.Redis.from_url(redis_url)
            p = team_prefix(team["id"])
            wait_until(lambda: client.hlen(p + "res") == 0, "the reservation to be released")
            events = [fields for _, fields in client.xrange(p + "ledger")]
            assert [(e[b"status"], e[b"charged_micros"]) for e in events] == [(b"cancelled", b"0")]
