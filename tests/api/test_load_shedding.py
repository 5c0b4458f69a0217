"""Past capacity the gateway refuses new image requests at once, in OpenAI's shape with retry-after,
before authentication, admission or any provider call: nothing is reserved or charged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accounting.keys import team_prefix
from gateway.api.server import HttpLimits, http_protocol
from gateway.api.state import AppState
from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import ADMIN, admin_headers
from tests.fakes.server import serve_in_thread
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import running_worker, wait_until
from tests.raw_http import connect, is_open_and_unanswered, request_head


def _team_and_key(client: TestClient) -> tuple[str, str]:
    team = client.post("/admin/teams", json={"name": "shed"}, headers=admin_headers()).json()
    key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    return team["id"], key


def test_a_process_at_its_in_flight_limit_sheds_with_503_and_retry_after(bare_client: TestClient) -> None:
    state: AppState = bare_client.app.state.gateway  # type: ignore[attr-defined]
    team_id, key = _team_and_key(bare_client)
    body = {"model": "hidream-i1-full", "prompt": "x"}
    auth = {"Authorization": f"Bearer {key}"}
    state.shedder.in_flight = state.shedder.max_in_flight  # as if that many were being served
    try:
        shed = bare_client.post("/v1/images/generations", json=body, headers=auth)
        edit = bare_client.post(
            "/v1/images/edits", files={"image": ("a.png", b"x", "image/png")}, data=body, headers=auth
        )
    finally:
        state.shedder.in_flight = 0
    for r in (shed, edit):
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded" and r.headers["x-request-id"].startswith("req_")
    shed_count = state.metrics.registry.get_sample_value("gateway_shed_total", {"reason": "in_flight"})
    assert shed_count == 2
    # Below the limit the same request goes through the pipeline (and fails there: no provider here).
    r = bare_client.post("/v1/images/generations", json=body, headers=auth)
    assert r.status_code == 503 and r.json()["error"]["code"] != "overloaded"
    # Nothing was reserved or charged for the shed requests.
    r_ = redis.Redis.from_url(state.settings.redis_url or "")
    try:
        assert r_.xlen(team_prefix(team_id) + "ledger") <= 1  # only the one that reached admission
        statuses = {f[b"status"] for _, f in r_.xrange(team_prefix(team_id) + "ledger")}
        assert statuses <= {b"failed"}
    finally:
        r_.close()


def test_shedding_happens_before_authentication(bare_client: TestClient) -> None:
    state: AppState = bare_client.app.state.gateway  # type: ignore[attr-defined]
    state.shedder.in_flight = state.shedder.max_in_flight
    try:
        r = bare_client.post("/v1/images/generations", json={"model": "hidream-i1-full", "prompt": "x"})
    finally:
        state.shedder.in_flight = 0
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"


class Arrivals:
    """ASGI wrapper: counts the requests the app has taken up, i.e. that it started to read the body
    of or answered (whichever comes first), and those it is done with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0
        self.done = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = False

        def arrived() -> None:
            nonlocal seen
            if not seen:
                seen = True
                self.count += 1

        async def receive_() -> Message:
            arrived()
            return await receive()

        async def send_(message: Message) -> None:
            arrived()
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        finally:
            self.done += 1


@pytest.fixture
def served_with_worker(redis_url: str, tmp_path: Path, pricing_file: Path) -> Iterator[tuple[str, Arrivals]]:
    """The gateway on a loopback port, a stand-in GPU worker behind it, and 5 slots a process."""
    with running_worker("full", pipeline=StandInPipeline(step_s=0.001)) as worker:
        settings = Settings(
            redis_url=redis_url, admin_key=ADMIN, data_dir=tmp_path / "data", pricing_file=pricing_file,
            local_gpu_urls=[worker.url], probe_interval_s=0.05, max_in_flight_per_process=5,
        )  # fmt: skip
        app = Arrivals(create_app(settings))
        with serve_in_thread(app, http=http_protocol(HttpLimits.from_settings(settings))) as url:
            yield url, app


def test_requests_whose_body_has_not_arrived_hold_no_slot(
    served_with_worker: tuple[str, Arrivals], caplog: pytest.LogCaptureFixture
) -> None:
    url, arrivals = served_with_worker
    with httpx.Client(base_url=url, timeout=30) as client:
        team = client.post("/admin/teams", json={"name": "slow"}, headers=admin_headers()).json()
        key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        head = request_head(
            "POST", "/v1/images/generations", {**auth, "content-type": "application/json", "content-length": "100"}
        )
        slow = [connect(url) for _ in range(25)]  # five times the process's slots
        try:
            for sock in slow:
                sock.sendall(head + b"{")  # the headers and one byte of the body, and then nothing
            wait_until(lambda: arrivals.count >= 25, "the slow requests to reach the app")
            body = {"model": "hidream-i1-full", "prompt": "a fox", "num_inference_steps": 1}
            r = client.post("/v1/images/generations", json=body, headers=auth)
            assert r.status_code == 200, r.text
            assert r.json()["data"][0]["url"]
            assert all(is_open_and_unanswered(sock) for sock in slow)
        finally:
            for sock in slow:
                sock.close()
    # Callers that leave halfway through their body are no error of the gateway's.
    wait_until(lambda: arrivals.done >= 26, "the slow requests to end")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
