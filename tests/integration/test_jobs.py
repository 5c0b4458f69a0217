"""Async jobs end to end: `gateway serve` (two worker processes, each running the job runner) on a
real redis-server behind the fake fal, a webhook target on loopback, and the reference
`standardwebhooks` library checking the gateway's signatures."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from standardwebhooks.webhooks import Webhook

from gateway.accounting.keys import team_prefix
from tests.fakes.webhook_receiver import Receiver, running_receiver
from tests.integration.gateway_stack import Stack, running_stack
from tests.redis_server import running_redis

pytestmark = pytest.mark.slow

PRICE = 50_000  # hidream-i1-full, micro-USD per image
ASYNC = {"Prefer": "respond-async"}
JOBS_ENV = {
    "GATEWAY_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
    "GATEWAY_WEBHOOK_ALLOW_HTTP": "true",
    "GATEWAY_JOB_POLL_S": "0.05",
    "GATEWAY_WEBHOOK_BACKOFF_S": "0.2",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A redis-server of its own: job queues are global in a Redis, and a job another test's
    # gateway left queued there must not be served by this stack, nor this stack's by another.
    tmp = tmp_path_factory.mktemp("jobs")
    with running_redis(tmp / "redis") as server, running_stack(server, tmp, gateway_env=JOBS_ENV) as made:
        yield made


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as made:
        yield made


@pytest.fixture(scope="module")
def secret(stack: Stack) -> str:
    made = stack.admin.post(f"/admin/teams/{stack.team_id}/webhook-secret")
    assert made.status_code == 201, made.text
    return str(made.json()["secret"])


@pytest.fixture(autouse=True)
def _fal_healthy(stack: Stack) -> Iterator[None]:
    yield
    httpx.delete(stack.fal + "/_fake/faults")


def _team(stack: Stack, name: str, **limits: int) -> str:
    body: dict[str, Any] = {"name": name, "monthly_budget_usd": 50.0}
    if limits:
        body["limits"] = limits
    team = stack.admin.post("/admin/teams", json=body).json()
    return str(stack.admin.post(f"/admin/teams/{team['id']}/keys", json={}).json()["key"])


def _submit(stack: Stack, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    return httpx.post(
        stack.base + "/v1/images/generations",
        json={"model": "hidream-i1-full", "prompt": "a lighthouse at dusk", **body},
        headers={"Authorization": f"Bearer {key or stack.key}", **ASYNC},
        timeout=30,
    )


def _job(stack: Stack, job_id: str, key: str | None = None) -> httpx.Response:
    return httpx.get(f"{stack.base}/v1/images/jobs/{job_id}", headers={"Authorization": f"Bearer {key or stack.key}"})


def _until(stack: Stack, job_id: str, done: Any, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = _job(stack, job_id).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job never got there: {job}"
        time.sleep(0.05)


def _ledger(stack: Stack, request_id: str) -> list[tuple[str, int]]:
    with redis.Redis.from_url(stack.redis_url) as r:
        events = [f for _, f in r.xrange(team_prefix(stack.team_id) + "ledger")]
    return [
        (e[b"status"].decode(), int(e[b"charged_micros"])) for e in events if e[b"request_id"] == request_id.encode()
    ]


def _settled(stack: Stack, job_id: str) -> list[tuple[str, int]]:
    deadline = time.monotonic() + 10
    while not (got := _ledger(stack, job_id)):
        assert time.monotonic() < deadline, "the job was never settled"
        time.sleep(0.05)
    return got


def test_a_job_is_answered_at_once_polled_and_delivered_by_a_signed_webhook(
    stack: Stack, receiver: Receiver, secret: str
) -> None:
    r = _submit(stack, {"n": 2, "webhook_url": receiver.url("/ok")})
    assert r.status_code == 202, r.text
    assert r.headers["preference-applied"] == "respond-async"
    job = r.json()
    assert job["object"] == "image.job" and job["status"] in ("queued", "running")
    assert job["model"] == "hidream-i1-full" and job["created_at"] > 0
    assert r.headers["location"] == job["links"]["self"] == f"{stack.base}/v1/images/jobs/{job['id']}"
    assert "x-ratelimit-remaining-requests" in r.headers

    done = _until(stack, job["id"], lambda j: j["status"] == "succeeded" and j["webhook"]["state"] != "pending")
    assert done["queue_position"] is None and done["error"] is None
    result = done["result"]
    assert len(result["data"]) == 2 and result["size"] == "1024x1024"
    assert result["gateway"]["provider"] == "fal" and result["gateway"]["charged_usd"] == "0.100000"
    image = httpx.get(result["data"][0]["url"])
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)
    assert _settled(stack, job["id"]) == [("succeeded", 2 * PRICE)]

    [delivery] = receiver.deliveries("/ok")
    payload = Webhook(secret).verify(delivery.body, delivery.headers)  # the reference implementation
    assert delivery.headers["webhook-id"] == job["id"]
    assert payload["type"] == "image.job.succeeded"
    assert payload["data"]["id"] == job["id"] and len(payload["data"]["result"]["data"]) == 2
    assert httpx.get(payload["data"]["result"]["data"][1]["url"]).status_code == 200
    assert done["webhook"]["state"] == "delivered"
    assert [a["status_code"] for a in done["webhook"]["attempts"]] == [204]

    # A forged signature is what the reference implementation refuses: the check above can fail.
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(delivery.body + b" ", delivery.headers)


def test_a_webhook_that_fails_twice_is_tried_again_with_every_attempt_recorded(
    stack: Stack, receiver: Receiver, secret: str
) -> None:
    receiver.statuses[:] = [500, 503, 200]
    job = _submit(stack, {"webhook_url": receiver.url("/flaky")}).json()
    done = _until(stack, job["id"], lambda j: j["webhook"]["state"] != "pending")
    assert done["webhook"]["state"] == "delivered"
    attempts = done["webhook"]["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 503, 200]
    assert attempts[0]["error"] == "answered 500" and attempts[2]["error"] is None
    assert attempts[0]["at"] < attempts[1]["at"] < attempts[2]["at"]
    deliveries = receiver.deliveries("/flaky")
    assert len(deliveries) == 3
    assert {d.headers["webhook-id"] for d in deliveries} == {job["id"]}  # the same message, for dedup
    for d in deliveries:
        Webhook(secret).verify(d.body, d.headers)
    assert _settled(stack, job["id"]) == [("succeeded", PRICE)]  # a webhook retry charges nothing more


def test_a_refused_connection_is_an_attempt_too(stack: Stack, receiver: Receiver, secret: str) -> None:
    from tests.fakes.server import free_port

    job = _submit(stack, {"webhook_url": f"http://127.0.0.1:{free_port()}/nobody"}).json()
    done = _until(stack, job["id"], lambda j: len(j["webhook"]["attempts"]) >= 2)
    first = done["webhook"]["attempts"][0]
    assert first["status_code"] is None and first["error"].startswith("connection failed")


def test_webhook_urls_on_addresses_not_allowed_are_refused_at_submit(stack: Stack, secret: str) -> None:
    for url in (
        "http://[::1]:8080/hook",  # loopback, outside the allowed 127.0.0.0/8
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "ftp://example.com/hook",
        "not a url",
    ):
        r = _submit(stack, {"webhook_url": url})
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"]["param"] == "webhook_url", url
    without_prefer = httpx.post(
        stack.base + "/v1/images/generations",
        json={"model": "hidream-i1-full", "prompt": "x", "webhook_url": "http://127.0.0.1:1/hook"},
        headers={"Authorization": f"Bearer {stack.key}"},
    )
    assert without_prefer.status_code == 400 and without_prefer.json()["error"]["param"] == "webhook_url"


def test_another_teams_job_is_not_found(stack: Stack) -> None:
    job = _submit(stack, {}).json()
    other = _team(stack, "other")
    for method in ("GET", "DELETE"):
        r = httpx.request(
            method, f"{stack.base}/v1/images/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"}
        )
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "job_not_found"
    assert _job(stack, "job_doesnotexist").status_code == 404
    assert _until(stack, job["id"], lambda j: j["status"] == "succeeded")["result"] is not None


def test_delete_cancels_a_running_job_upstream_and_charges_nothing(stack: Stack) -> None:
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "hang", "count": 1})
    cancels = httpx.get(stack.fal + "/_fake/stats").json()["cancels"]
    job = _submit(stack, {}).json()
    _until(stack, job["id"], lambda j: j["status"] == "running")
    deadline = time.monotonic() + 10
    while httpx.get(stack.fal + "/_fake/stats").json()["submits"] == 0:  # the job reached fal
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.delete(f"{stack.base}/v1/images/jobs/{job['id']}", headers={"Authorization": f"Bearer {stack.key}"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert _settled(stack, job["id"]) == [("cancelled", 0)]
    deadline = time.monotonic() + 10
    while httpx.get(stack.fal + "/_fake/stats").json()["cancels"] <= cancels:
        assert time.monotonic() < deadline, "the fal request was never cancelled"
        time.sleep(0.05)
    time.sleep(0.5)  # the runner's own settlement of the cancelled call comes after; it must change nothing
    assert _ledger(stack, job["id"]) == [("cancelled", 0)]
    assert _job(stack, job["id"]).json()["status"] == "cancelled"


def test_limits_apply_to_jobs(stack: Stack) -> None:
    key = _team(stack, "one-at-a-time", max_in_flight=1, requests_per_minute=1000)
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "hang", "count": 1})
    first = _submit(stack, {}, key=key)
    assert first.status_code == 202
    second = _submit(stack, {}, key=key)  # the queued or running job holds the team's one slot
    assert second.status_code == 429, second.text
    assert second.json()["error"]["type"] == "requests" or "in flight" in second.json()["error"]["message"]
    sync = httpx.post(
        stack.base + "/v1/images/generations",
        json={"model": "hidream-i1-full", "prompt": "x"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert sync.status_code == 429  # and a synchronous request is refused the same way
    httpx.delete(f"{stack.base}/v1/images/jobs/{first.json()['id']}", headers={"Authorization": f"Bearer {key}"})
    assert _submit(stack, {}, key=key).status_code == 202  # the slot is free again
    bad = _submit(stack, {"n": 0}, key=key)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"


def test_an_edit_runs_as_a_job(stack: Stack) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(buf, "PNG")
    r = httpx.post(
        stack.base + "/v1/images/edits",
        data={"model": "hidream-i1-full", "prompt": "make it blue", "response_format": "b64_json"},
        files={"image": ("in.png", buf.getvalue(), "image/png")},
        headers={"Authorization": f"Bearer {stack.key}", **ASYNC},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "edit"
    done = _until(stack, job["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    assert done["result"]["data"][0]["b64_json"]  # read back from the store at each read
    assert json.loads(httpx.get(stack.fal + "/_fake/last-submit").content)["image_url"].startswith("data:image/png")
