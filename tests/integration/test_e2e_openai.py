"""End to end: the gateway as a real process (two worker processes) on a real redis-server, the
fake fal server as a real process, and the real `openai` package as the client."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis
from PIL import Image

from gateway.accounting.keys import team_prefix
from tests.api.conftest import wait_for
from tests.integration.gateway_stack import Stack, running_stack
from tests.processes import python
from tests.raw_http import connect, read_response, request_head
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("e2e")) as made:
        yield made


def png_bytes(w: int = 96, h: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _spent(stack: Stack) -> int:
    """What the team was charged, once none of its requests is in flight."""
    stack.settled()
    r = redis.Redis.from_url(stack.redis_url)
    try:
        keys = list(r.scan_iter(match=team_prefix(stack.team_id) + "usage:*"))
        return sum(int(r.hget(k, "spent_micros") or 0) for k in keys)
    finally:
        r.close()


def _generate_settled(stack: Stack, **kwargs: object) -> None:
    """A generation, returning once its settlement is in the ledger: a served request is settled
    after its answer is handed over, so the ledger may lag the answer by a moment."""
    raw = stack.client().images.with_raw_response.generate(**kwargs)  # type: ignore[call-overload]
    request_id = raw.headers["x-request-id"].encode()
    deadline = time.monotonic() + 10
    with redis.Redis.from_url(stack.redis_url) as r:
        while not any(f[b"request_id"] == request_id for _, f in r.xrange(team_prefix(stack.team_id) + "ledger")):
            assert time.monotonic() < deadline, "the request was never settled"
            time.sleep(0.05)


def test_generation_with_urls_through_the_openai_sdk(stack: Stack) -> None:
    raw = stack.client().images.with_raw_response.generate(
        model="hidream-i1-full", prompt="a lighthouse at dusk", n=2, size="1360x768"
    )
    result = raw.parse()
    assert raw.headers["x-gateway-provider"] == "fal"
    assert raw.headers["x-gateway-charged-usd"] == "0.100000"
    assert raw.headers["x-request-id"].startswith("req_")
    assert result.data is not None and len(result.data) == 2
    for item in result.data:
        assert item.url is not None and item.revised_prompt == "a lighthouse at dusk"
        body = httpx.get(item.url, timeout=10).content
        assert Image.open(io.BytesIO(body)).size == (1360, 768)


def test_generation_with_b64_json_and_hidream_extras(stack: Stack) -> None:
    result = stack.client().images.generate(
        model="hidream-i1-full",
        prompt="a red bicycle",
        response_format="b64_json",
        extra_body={"seed": 4242, "negative_prompt": "blurry", "num_inference_steps": 12, "guidance_scale": 3.5},
    )
    assert result.data is not None and len(result.data) == 1
    b64 = result.data[0].b64_json
    assert b64 is not None
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG" and img.size == (1024, 1024)
    assert (result.model_extra or {}).get("seed") == 4242


def test_edit_with_one_image_alone_and_as_a_one_element_list(stack: Stack) -> None:
    client = stack.client()
    alone = client.images.edit(
        model="hidream-i1-full", image=("in.png", png_bytes(), "image/png"), prompt="make it blue"
    )
    assert alone.data is not None and len(alone.data) == 1
    listed = client.images.edit(
        model="hidream-i1-full", image=[("in.png", png_bytes(), "image/png")], prompt="make it blue",
        response_format="b64_json", extra_body={"strength": "0.5"},
    )  # fmt: skip
    assert listed.data is not None and listed.data[0].b64_json


def test_edit_with_more_images_than_the_model_takes_names_image(stack: Stack) -> None:
    before = _spent(stack)
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().images.edit(
            model="hidream-i1-full", image=[("a.png", png_bytes(), "image/png"), ("b.png", png_bytes(), "image/png")],
            prompt="merge",
        )  # fmt: skip
    assert info.value.param == "image" and info.value.status_code == 400
    assert _spent(stack) == before


def test_models_list_and_retrieve(stack: Stack) -> None:
    client = stack.client()
    ids = [m.id for m in client.models.list()]
    assert ids[:3] == ["hidream-i1-full", "hidream-i1-dev", "hidream-i1-fast"]
    assert set(ids[3:]) == {"dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini"}  # aliases (pricing.yaml)
    assert client.models.retrieve("hidream-i1-dev").id == "hidream-i1-dev"
    assert (client.models.retrieve("dall-e-3").model_extra or {})["alias_of"] == "hidream-i1-full"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-9")


@pytest.mark.parametrize(
    ("kwargs", "param", "error"),
    [
        ({"prompt": ""}, "prompt", openai.BadRequestError),
        ({"prompt": "x", "n": 11}, "n", openai.BadRequestError),
        ({"prompt": "x", "size": "huge"}, "size", openai.BadRequestError),
        ({"prompt": "x", "response_format": "gif"}, "response_format", openai.BadRequestError),
        ({"prompt": "x", "model": "hidream-x"}, "model", openai.NotFoundError),
        ({"prompt": "x", "extra_body": {"guidance_scale": 99}}, "guidance_scale", openai.BadRequestError),
    ],
)
def test_bad_inputs_are_named_and_cost_nothing(
    stack: Stack, kwargs: dict[str, object], param: str, error: type[openai.APIStatusError]
) -> None:
    before = _spent(stack)
    kwargs = {"model": "hidream-i1-full", **kwargs}
    with pytest.raises(error) as info:
        stack.client().images.generate(**kwargs)  # type: ignore[call-overload]
    assert info.value.param == param
    assert info.value.request_id is not None and info.value.request_id.startswith("req_")
    assert _spent(stack) == before


def test_revoked_key_is_refused_at_once(stack: Stack) -> None:
    created = stack.admin.post(f"/admin/teams/{stack.team_id}/keys", json={"name": "temp"}).json()
    client = stack.client(created["key"])
    assert [m.id for m in client.models.list()][0] == "hidream-i1-full"
    listed = stack.admin.get(f"/admin/teams/{stack.team_id}/keys").json()["data"]
    assert created["id"] in [k["id"] for k in listed] and "key" not in listed[0]
    assert stack.admin.delete(f"/admin/keys/{created['id']}").status_code == 200
    for _ in range(4):  # both worker processes see it
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_provider_auth_failure_is_a_502_and_costs_nothing(stack: Stack) -> None:
    before = _spent(stack)
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "auth", "count": 1}).raise_for_status()
    with pytest.raises(openai.InternalServerError) as info:
        stack.client().images.generate(model="hidream-i1-full", prompt="x")
    assert info.value.status_code == 502
    assert _spent(stack) == before


def test_wrong_content_type_and_malformed_json(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    r = httpx.post(stack.base + "/v1/images/generations", content=b"prompt=x", headers=headers)
    assert r.status_code == 415 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        stack.base + "/v1/images/generations",
        content=b'{"prompt": ',
        headers={**headers, "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(stack.base + "/v1/images/generations", json={"prompt": "x"})
    assert r.status_code == 401 and r.headers["x-request-id"].startswith("req_")


def test_spend_equals_images_served_times_price(stack: Stack) -> None:
    before = _spent(stack)
    _generate_settled(stack, model="hidream-i1-full", prompt="count me", n=3)
    assert _spent(stack) - before == 3 * 50_000


def test_forged_image_url_is_refused(stack: Stack) -> None:
    r = httpx.get(stack.base + "/v1/files/images/abc.png", params={"expires": 1, "sig": "0"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "url_expired"


def _ledger_statuses(stack: Stack) -> list[bytes]:
    r = redis.Redis.from_url(stack.redis_url)
    try:
        return [f[b"status"] for _, f in r.xrange(team_prefix(stack.team_id) + "ledger")]
    finally:
        r.close()


def test_caller_going_away_cancels_the_fal_job_and_costs_nothing(stack: Stack) -> None:
    before_spent = _spent(stack)
    cancels_before = httpx.get(stack.fal + "/_fake/stats").json()["cancels"]
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "hang", "count": 1}).raise_for_status()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            stack.base + "/v1/images/generations",
            json={"model": "hidream-i1-full", "prompt": "never finishes"},
            headers={"Authorization": f"Bearer {stack.key}"},
            timeout=1.5,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _ledger_statuses(stack)[-1:] != [b"cancelled"]:
        time.sleep(0.05)
    assert _ledger_statuses(stack)[-1] == b"cancelled"
    assert httpx.get(stack.fal + "/_fake/stats").json()["cancels"] == cancels_before + 1
    assert _spent(stack) == before_spent


def _cli(stack: Stack, *args: str) -> str:
    out = subprocess.run(
        python("gateway.cli", *args, "--url", stack.base, "--admin-key", stack.admin_key),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


def test_cli_creates_a_team_issues_lists_and_revokes_a_key(stack: Stack) -> None:
    team = json.loads(_cli(stack, "teams", "create", "cli-team", "--budget", "5", "--ipm", "7"))
    assert team["monthly_budget_usd"] == 5.0 and team["limits"]["images_per_minute"] == 7
    assert "cli-team" in _cli(stack, "teams", "list")
    created = _cli(stack, "keys", "create", team["id"], "--name", "laptop")
    key_id = created.split("key id: ")[1].split()[0]
    key = created.split("key:    ")[1].split()[0]
    assert key_id in _cli(stack, "keys", "list", team["id"])
    assert [m.id for m in stack.client(key).models.list()][0] == "hidream-i1-full"
    assert json.loads(_cli(stack, "teams", "disable", team["id"]))["disabled"] is True
    assert f"{team['id']:<22} {'cli-team':<20} disabled" in _cli(stack, "teams", "list")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        stack.client(key).images.generate(model="hidream-i1-full", prompt="refused")
    assert refused.value.code == "team_disabled"
    assert json.loads(_cli(stack, "teams", "enable", team["id"]))["disabled"] is False
    wait_for(lambda: "last used 20" in _cli(stack, "keys", "list", team["id"]), "the models call's use")
    _cli(stack, "keys", "revoke", key_id)
    with pytest.raises(openai.AuthenticationError):
        stack.client(key).models.list()


def _metric_sum(text: str, name: str, team_id: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'team="{team_id}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_summed_across_worker_processes_equal_the_ledger(stack: Stack) -> None:
    for _ in range(3):
        _generate_settled(stack, model="hidream-i1-full", prompt="metered", n=2)
    r = redis.Redis.from_url(stack.redis_url)
    try:
        events = [f for _, f in r.xrange(team_prefix(stack.team_id) + "ledger")]
    finally:
        r.close()
    images = sum(int(f[b"images"]) for f in events)
    spend = sum(int(f[b"charged_micros"]) for f in events) / 1_000_000
    for _ in range(6):  # successive scrapes land on either worker process; each must see it all
        text = httpx.get(stack.base + "/metrics", headers={"Authorization": f"Bearer {stack.metrics_token}"}).text
        assert _metric_sum(text, "gateway_images_total", stack.team_id) == images
        assert abs(_metric_sum(text, "gateway_spend_usd_total", stack.team_id) - spend) < 1e-9


def test_cli_usage_table_and_csv_agree_with_the_ledger(stack: Stack) -> None:
    _generate_settled(stack, model="hidream-i1-full", prompt="invoice me", n=2)
    r = redis.Redis.from_url(stack.redis_url)
    try:
        events = [f for _, f in r.xrange(team_prefix(stack.team_id) + "ledger")]
    finally:
        r.close()
    spent = sum(int(f[b"charged_micros"]) for f in events) / 1_000_000
    table = _cli(stack, "usage", "--team-id", stack.team_id)
    row = next(line for line in table.splitlines() if line.startswith(stack.team_id))
    assert f"{spent:.2f}" in row.split()
    csv_text = _cli(stack, "usage", "--team-id", stack.team_id, "--csv")
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("time,request_id") and len(lines) - 1 == len(events)
    charged = sum(float(line.split(",")[10]) for line in lines[1:])
    assert abs(charged - spent) < 1e-9


def test_websocket_upgrades_are_not_taken(stack: Stack) -> None:
    # The gateway speaks no WebSocket: an upgrade request is answered as plain HTTP, so that
    # surface (a second protocol stack reachable before authentication) does not exist.
    upgrade = {
        "connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
        "sec-websocket-key": base64.b64encode(os.urandom(16)).decode(),
    }  # fmt: skip
    with connect(stack.base) as sock:
        sock.sendall(request_head("GET", "/health", upgrade))
        r = read_response(sock)
    assert r.status == 200 and r.json()["status"] == "ok", (r.status, r.body)
