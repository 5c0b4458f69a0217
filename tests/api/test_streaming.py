"""stream=true through the real app: OpenAI's completed events, one per image, charged once;
refusals and failures before the stream begins are ordinary HTTP errors, charged nothing."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
import redis
from PIL import Image

from gateway.accounting.keys import team_prefix
from gateway.api.server import HttpLimits, http_protocol
from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import Routed, admin_headers, wait_for
from tests.fakes.server import serve_in_thread
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import running_worker
from tests.sse import Sse, parse

EVENT_KEYS = {"type", "b64_json", "created_at", "size", "quality", "background", "output_format", "usage", "gateway"}
ZERO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
              "total_tokens": 0}  # fmt: skip


def _ledger(routed: Routed) -> list[tuple[bytes, bytes]]:
    state = routed.client.app.state.gateway  # type: ignore[attr-defined]
    r = redis.Redis.from_url(state.settings.redis_url or "")
    try:
        return [(f[b"status"], f[b"charged_micros"]) for _, f in r.xrange(team_prefix(routed.team_id) + "ledger")]
    finally:
        r.close()


def _events(r: httpx.Response) -> list[Sse]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    return [e for e in parse(r.text) if e.comment is None]  # keep-alive comments aside


def _png(w: int = 96, h: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (20, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("provider", ["fal", "local_gpu"])
def test_a_streamed_generation_is_one_completed_event_per_image_charged_once(routed: Routed, provider: str) -> None:
    r = routed.generate({"x-gateway-provider": provider}, stream=True, n=2, size="512x512", seed=7)
    events = _events(r)
    assert [e.event for e in events] == ["image_generation.completed"] * 2
    # Each image is a call of its own (sent as soon as it is made), with its own seed: seed + its index.
    assert sorted(e.json()["seed"] for e in events) == [7, 8]
    for event in events:
        body = event.json()
        assert set(body) == EVENT_KEYS | {"seed"}
        assert body["type"] == "image_generation.completed" and body["usage"] == ZERO_USAGE
        assert (body["size"], body["quality"], body["background"], body["output_format"]) == (
            "512x512", "high", "opaque", "png"
        )  # fmt: skip
        assert isinstance(body["created_at"], int)
        assert body["gateway"] == {
            "provider": provider, "route_reason": "pinned", "charged_usd": "0.100000", "ignored_params": []
        }  # fmt: skip
        assert Image.open(io.BytesIO(base64.b64decode(body["b64_json"]))).size == (512, 512)
    assert r.headers["x-gateway-generated-size"] == "1024x1024"
    assert "x-gateway-charged-usd" not in r.headers  # said in the events: a stream's headers go first
    assert _ledger(routed) == [(b"succeeded", b"100000")]


def test_a_streamed_edit_sends_image_edit_completed(routed: Routed) -> None:
    r = routed.client.post(
        "/v1/images/edits",
        data={"model": "hidream-i1-full", "prompt": "make it red", "stream": "true", "output_format": "jpeg"},
        files={"image": ("in.png", _png(), "image/png")},
        headers={"Authorization": f"Bearer {routed.key}", "x-gateway-provider": "fal"},
    )
    (event,) = _events(r)
    body = event.json()
    assert event.event == body["type"] == "image_edit.completed"
    assert body["output_format"] == "jpeg" and body["usage"] == ZERO_USAGE
    assert Image.open(io.BytesIO(base64.b64decode(body["b64_json"]))).format == "JPEG"
    assert _ledger(routed) == [(b"succeeded", b"50000")]


def test_a_stream_with_response_format_url_is_refused_naming_it_and_costs_nothing(routed: Routed) -> None:
    r = routed.generate(stream=True, response_format="url")
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["param"] == "response_format"
    ok = routed.generate({"x-gateway-provider": "fal"}, stream=True, response_format="b64_json")
    assert [e.event for e in _events(ok)] == ["image_generation.completed"]
    assert _ledger(routed) == [(b"succeeded", b"50000")]


@pytest.mark.parametrize(("partial_images", "named"), [(0, ""), (2, "partial_images")])
def test_partial_images_are_named_ignored_on_a_route_that_makes_none(
    routed: Routed, partial_images: int, named: str
) -> None:
    r = routed.generate({"x-gateway-provider": "fal"}, stream=True, partial_images=partial_images, quality="low")
    expected = ", ".join(sorted(filter(None, [named, "quality"])))
    assert r.headers["x-gateway-ignored-params"] == expected
    (event,) = _events(r)
    assert event.json()["gateway"]["ignored_params"] == expected.split(", ")


def test_an_upstream_failure_before_the_stream_begins_is_an_http_error_charged_nothing(routed: Routed) -> None:
    routed.fal.fail_next("unavailable")  # fal fails in well under the 10 s before a first keep-alive
    r = routed.generate({"x-gateway-provider": "fal"}, stream=True)
    assert r.status_code == 502 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["type"] == "server_error"
    assert _ledger(routed) == [(b"failed", b"0")]


def test_a_refused_admission_is_an_http_error(routed: Routed) -> None:
    patched = routed.client.patch(
        f"/admin/teams/{routed.team_id}", json={"monthly_budget_usd": 0.01}, headers=admin_headers()
    )
    assert patched.status_code == 200
    r = routed.generate(stream=True)
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    assert _ledger(routed) == []


def test_a_repeated_stream_with_the_same_idempotency_key_replays_its_images_uncharged(routed: Routed) -> None:
    headers = {"x-gateway-provider": "fal", "Idempotency-Key": "stream-once"}
    first = _events(routed.generate(headers, stream=True, n=2))
    again = routed.generate(headers, stream=True, n=2)
    replayed = _events(again)
    assert again.headers["x-gateway-idempotent-replay"] == "true"
    # The same images (a stream sends them in the order they were made, a replay in the answer's).
    assert sorted(e.json()["b64_json"] for e in replayed) == sorted(e.json()["b64_json"] for e in first)
    assert replayed[0].json()["gateway"]["charged_usd"] == "0.000000"
    assert _ledger(routed) == [(b"succeeded", b"100000")]


def test_a_stream_holds_its_process_slot_until_it_ends(settings: Settings) -> None:
    """The handler returns as the stream begins; the request is still in flight in this process."""
    with running_worker("full", pipeline=StandInPipeline(step_s=0.001)) as worker:
        settings = settings.model_copy(update={
            "local_gpu_urls": [worker.url], "probe_interval_s": 0.05, "max_in_flight_per_process": 1,
            "stream_keepalive_s": 0.05,
        })  # fmt: skip
        app = create_app(settings)
        with (
            serve_in_thread(app, http=http_protocol(HttpLimits.from_settings(settings))) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            team = client.post("/admin/teams", json={"name": "s"}, headers=admin_headers()).json()
            key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            body = {"model": "hidream-i1-full", "prompt": "held", "num_inference_steps": 2}
            worker.pipeline.plan("hold")
            with client.stream("POST", "/v1/images/generations", json={**body, "stream": True}, headers=auth) as r:
                lines = r.iter_lines()
                assert next(lines) == ": keep-alive"  # the stream has begun: its handler has returned
                refused = client.post("/v1/images/generations", json=body, headers=auth)
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
                worker.pipeline.release.set()
                rest = "\n".join(lines)
            assert [e.event for e in parse(rest + "\n") if e.comment is None] == ["image_generation.completed"]
            # ...and gives its slot back once it has ended (and was settled).
            wait_for(lambda: app.state.gateway.shedder.in_flight == 0, "the stream's slot to be given back")
