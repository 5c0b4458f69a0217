"""The fake fal server keeps to fal's protocol (fal-api.md §2, §5, §11), so that adapter tests
against it mean something: reply shapes, status codes, URL rules, cancel table, auth, validation."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.fakes.fal_server import create_app
from tests.fakes.fal_state import FakeFal
from tests.fakes.server import free_port
from tests.processes import Process, python

KEY = "kid:ksecret"
BASE = "http://fal.test"
AUTH = {"Authorization": f"Key {KEY}"}
MODEL = "fal-ai/hidream-i1-full"
Client = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def client_for() -> AsyncIterator[Client]:
    clients: list[httpx.AsyncClient] = []

    def make(fake: FakeFal, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=create_app(fake, key=KEY, keepalive_s=0.05))
        client = httpx.AsyncClient(transport=transport, base_url=BASE, headers=AUTH if headers is None else headers)
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


async def submit(client: httpx.AsyncClient, payload: object, model: str = MODEL) -> dict[str, object]:
    r = await client.post(f"/{model}", json=payload)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    assert r.headers["x-fal-request-id"] == body["request_id"]
    return body


async def test_submit_returns_absolute_app_only_urls_at_its_own_origin(client_for: Client) -> None:
    client = client_for(FakeFal())
    sub = await submit(client, {"prompt": "x"}, model=MODEL + "/image-to-image")
    rid = sub["request_id"]
    assert sub["status"] == "IN_QUEUE" and sub["queue_position"] == 0 and sub["logs"] is None
    assert sub["response_url"] == f"{BASE}/{MODEL}/requests/{rid}"
    assert sub["status_url"] == f"{BASE}/{MODEL}/requests/{rid}/status"
    assert sub["cancel_url"] == f"{BASE}/{MODEL}/requests/{rid}/cancel"
    # keyed by owner/app only: the sub-path is not a place to look requests up
    assert (await client.get(f"/{MODEL}/image-to-image/requests/{rid}/status")).status_code == 404


async def test_status_is_202_while_running_and_accepts_every_logs_form(client_for: Client) -> None:
    client = client_for(FakeFal(inference_s=60))
    sub = await submit(client, {"prompt": "x"})
    url = str(sub["status_url"])
    for logs, listed in (("0", False), ("1", True), ("true", True), ("false", False)):
        for path in (url, url + "/"):
            r = await client.get(path, params={"logs": logs})
            assert r.status_code == 202 and r.json()["status"] == "IN_PROGRESS"
            assert isinstance(r.json()["logs"], list) is listed and "logs" in r.json()
    assert (await client.get(url, params={"logs": "maybe"})).status_code == 422
    r = await client.get(str(sub["response_url"]))
    assert (r.status_code, r.json()) == (400, {"detail": "Request is still in progress"})


async def test_queued_requests_carry_their_queue_position(client_for: Client) -> None:
    client = client_for(FakeFal(queue_s=60))
    first, second = await submit(client, {"prompt": "a"}), await submit(client, {"prompt": "b"})
    assert second["queue_position"] == 1
    r = await client.get(str(second["status_url"]))
    assert r.status_code == 202 and r.json()["status"] == "IN_QUEUE" and r.json()["queue_position"] == 1
    assert "queue_position" in (await client.get(str(first["status_url"]))).json()


async def test_completed_is_200_and_the_result_is_the_bare_output(client_for: Client) -> None:
    fake = FakeFal(inference_s=0, response_suffix=True)
    client = client_for(fake)
    sub = await submit(client, {"prompt": "x", "seed": 3, "image_size": "landscape_4_3", "num_images": 2})
    r = await client.get(str(sub["status_url"]), params={"logs": "1"})
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED" and "error" not in r.json()
    assert str(sub["response_url"]).endswith("/response")
    for url in (str(sub["response_url"]), str(sub["response_url"]).removesuffix("/response")):
        out = await client.get(url)
        assert out.status_code == 200 and out.headers["x-fal-request-id"] == sub["request_id"]
    body = out.json()
    assert set(body) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert body["seed"] == 3 and body["has_nsfw_concepts"] == [False, False]
    image = body["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (1024, 768, "image/jpeg")
    cdn = await client.get(image["url"])
    assert cdn.content.startswith(b"\xff\xd8\xff")


async def test_cancel_follows_fals_table(client_for: Client) -> None:
    client = client_for(FakeFal(queue_s=60))
    sub = await submit(client, {"prompt": "x"})
    r = await client.put(str(sub["cancel_url"]))
    assert (r.status_code, r.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    r = await client.put(str(sub["cancel_url"]))
    assert (r.status_code, r.json()) == (400, {"status": "ALREADY_COMPLETED"})
    r = await client.put(f"/{MODEL}/requests/00000000-0000-0000-0000-000000000000/cancel")
    assert (r.status_code, r.json()) == (404, {"status": "NOT_FOUND"})
    status = (await client.get(str(sub["status_url"]))).json()
    assert status["status"] == "COMPLETED" and status["error_type"] == "client_cancelled"
    assert (await client.get(str(sub["response_url"]))).status_code == 499


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "No user found for Key ID and Secret"),
        ({"Authorization": "Key other:secret"}, "No user found for Key ID and Secret"),
        (
            {"Authorization": "Key nocolon"},
            "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'.",
        ),
    ],
)
async def test_key_auth_is_required_everywhere(client_for: Client, headers: dict[str, str], detail: str) -> None:
    fake = FakeFal()
    client, good = client_for(fake, headers), client_for(fake)
    sub = await submit(good, {"prompt": "x"})
    for r in (await client.post(f"/{MODEL}", json={"prompt": "x"}), await client.get(str(sub["status_url"]))):
        assert (r.status_code, r.json()) == (401, {"detail": detail})


async def test_invalid_input_is_accepted_then_fails_on_the_runner_with_a_422(client_for: Client) -> None:
    client = client_for(FakeFal(inference_s=0))
    sub = await submit(client, {"guidance_scale": 21, "num_images": 2})
    status = (await client.get(str(sub["status_url"]))).json()
    assert status["status"] == "COMPLETED" and status["error"] == "Invalid status code: 422"
    r = await client.get(str(sub["response_url"]))
    assert r.status_code == 422
    by_field = {tuple(d["loc"]): d for d in r.json()["detail"]}
    assert by_field[("body", "prompt")]["type"] == "missing"
    scale = by_field[("body", "guidance_scale")]
    assert scale["type"] == "less_than_equal" and scale["ctx"] == {"le": 20.0} and scale["input"] == 21
    assert scale["msg"] == "Input should be less than or equal to 20"
    assert scale["url"] == "https://docs.fal.ai/errors/#less_than_equal"


async def test_sync_mode_returns_data_uris(client_for: Client) -> None:
    client = client_for(FakeFal(inference_s=0))
    sub = await submit(client, {"prompt": "x", "sync_mode": True, "output_format": "png"})
    await client.get(str(sub["status_url"]))
    image = (await client.get(str(sub["response_url"]))).json()["images"][0]
    assert image["url"].startswith("data:image/png;base64,")


async def test_status_stream_sends_events_until_completed(client_for: Client) -> None:
    client = client_for(FakeFal(queue_s=0.15, inference_s=0.15))
    sub = await submit(client, {"prompt": "x"})
    r = await client.get(str(sub["status_url"]) + "/stream")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["status"] for e in events] == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


async def test_runner_failure_and_ingress_faults_look_like_fals(client_for: Client) -> None:
    fake = FakeFal(inference_s=0)
    client = client_for(fake)
    fake.fail_next("unavailable")
    sub = await submit(client, {"prompt": "x"})
    status = (await client.get(str(sub["status_url"]))).json()
    assert (status["status"], status["error_type"]) == ("COMPLETED", "runner_disconnected")
    r = await client.get(str(sub["response_url"]))
    assert r.status_code == 503 and r.headers["x-fal-error-type"] == "runner_disconnected"
    fake.fail_next("ingress_502")
    r = await client.post(f"/{MODEL}", json={"prompt": "x"})
    assert r.status_code == 502 and "nginx" in r.text and "x-fal-request-id" not in r.headers


async def test_faults_and_stats_over_http(client_for: Client) -> None:
    fake = FakeFal(inference_s=0)
    client = client_for(fake)
    assert (await client.post("/_fake/faults", json={"fault": "rate_limited", "count": 2})).status_code == 200
    assert (await client.post("/_fake/faults", json={"fault": "quota"})).status_code == 400
    for _ in range(2):
        r = await client.post(f"/{MODEL}", json={"prompt": "x"})
        assert r.status_code == 429 and float(r.headers["retry-after"]) > 0
    sub = await submit(client, {"prompt": "x"})
    await client.get(str(sub["status_url"]))
    stats = (await client.get("/_fake/stats")).json()
    assert (stats["submits"], stats["submit_refusals"], stats["status_polls"]) == (1, 2, 1)
    assert stats["polls"] == {sub["request_id"]: 1}


@pytest.mark.slow
def test_runs_as_a_process_for_end_to_end_tests(tmp_path: object) -> None:
    from pathlib import Path

    key, port = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}", free_port()
    args = python("tests.fakes.fal_server", "--port", str(port), "--key", key, "--inference-s", "0")
    proc = Process("fake-fal", args, {}, Path(str(tmp_path)) / "fal.log")
    try:
        base = f"http://127.0.0.1:{port}"
        proc.wait_http(base + "/_fake/stats")
        with httpx.Client(headers={"Authorization": f"Key {key}"}, timeout=10) as client:
            sub = client.post(f"{base}/{MODEL}", json={"prompt": "x"}).json()
            assert sub["status_url"].startswith(base + "/")
            assert client.get(sub["status_url"]).json()["status"] == "COMPLETED"
            image = client.get(sub["response_url"]).json()["images"][0]
            assert client.get(image["url"]).status_code == 200
    finally:
        proc.stop()
