"""stream=true end to end: the gateway as real processes (keep-alive every 0.05 s) before the fake
fal, and both real SDKs iterating its events; an upstream that fails after the stream began, a
caller that leaves mid-stream, and keep-alive comments while the upstream is slow."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import ImageEditCompletedEvent, ImageGenCompletedEvent
from PIL import Image

from tests.api.conftest import wait_for
from tests.integration.gateway_stack import Stack, running_stack
from tests.raw_http import connect, read_response, request_head
from tests.redis_server import RedisServer
from tests.sse import parse

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        redis_server, tmp_path_factory.mktemp("stream"), gateway_env={"GATEWAY_STREAM_KEEPALIVE_S": "0.05"}
    ) as made:
        yield made


def _png(w: int = 96, h: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _settled(stack: Stack, before: int) -> list[tuple[str, int]]:
    """The requests settled since the ledger held `before` of them (waiting for one at least: a
    request is settled just after its last event is sent)."""
    wait_for(lambda: len(stack.ledger()) > before, "the request to be settled")
    return stack.ledger()[before:]


def _fal(stack: Stack, path: str, body: dict[str, object]) -> dict[str, object]:
    r = httpx.post(stack.fal + path, json=body, timeout=10)
    r.raise_for_status()
    answer: dict[str, object] = r.json()
    return answer


def test_python_sdk_iterates_a_streamed_generation_of_two_images(stack: Stack) -> None:
    before = len(stack.settled_ledger())
    stream = stack.client(strict=True).images.generate(
        model="hidream-i1-full", prompt="two foxes", n=2, size="512x512", stream=True
    )
    events = list(stream)
    assert [type(e) for e in events] == [ImageGenCompletedEvent] * 2
    for event in events:
        assert (event.type, event.size, event.output_format, event.quality) == (
            "image_generation.completed", "512x512", "png", "high"
        )  # fmt: skip
        assert event.usage.total_tokens == 0 and event.usage.input_tokens_details.text_tokens == 0
        assert _decode(event.b64_json).size == (512, 512)
    assert (events[0].model_extra or {})["gateway"]["charged_usd"] == "0.100000"
    assert _settled(stack, before) == [("succeeded", 100_000)]


def test_python_sdk_iterates_a_streamed_edit(stack: Stack) -> None:
    before = len(stack.settled_ledger())
    stream = stack.client(strict=True).images.edit(
        model="hidream-i1-full", image=("in.png", _png(), "image/png"), prompt="make it blue", stream=True,
        output_format="jpeg",
    )  # fmt: skip
    (event,) = list(stream)
    assert isinstance(event, ImageEditCompletedEvent) and event.type == "image_edit.completed"
    assert event.output_format == "jpeg" and _decode(event.b64_json).format == "JPEG"
    assert _settled(stack, before) == [("succeeded", 50_000)]


def test_an_upstream_failure_after_the_stream_began_is_raised_by_the_sdk_and_costs_nothing(stack: Stack) -> None:
    before = len(stack.settled_ledger())
    _fal(stack, "/_fake/faults", {"fault": "hang"})
    # generate() returns once the answer's headers came, which a stream sends with its first
    # keep-alive: from here on a failure can only be said in the stream.
    stream = stack.client(strict=True).images.generate(model="hidream-i1-full", prompt="fails late", stream=True)
    assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert _fal(stack, "/_fake/end-hung", {"end": "unavailable"}) == {"ended": 1}
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert type(info.value) is openai.APIError  # an error event, not an HTTP status
    assert info.value.type == "server_error" and info.value.code == "upstream_error"
    assert _settled(stack, before) == [("failed", 0)]


def test_a_caller_that_leaves_mid_stream_cancels_the_fal_job_and_is_charged_nothing(stack: Stack) -> None:
    before = len(stack.settled_ledger())
    cancels = httpx.get(stack.fal + "/_fake/stats").json()["cancels"]
    _fal(stack, "/_fake/faults", {"fault": "hang"})
    body = json.dumps({"model": "hidream-i1-full", "prompt": "left early", "stream": True}).encode()
    headers = {"authorization": f"Bearer {stack.key}", "content-type": "application/json",
               "content-length": str(len(body))}  # fmt: skip
    with connect(stack.base) as sock:
        sock.sendall(request_head("POST", "/v1/images/generations", headers) + body)
        head = read_response(sock)  # the head only: the stream's body is chunked
        assert head.status == 200 and head.headers["content-type"] == "text/event-stream; charset=utf-8"
        received = b""
        while b": keep-alive" not in received:
            chunk = sock.recv(4096)
            assert chunk, "the gateway closed the stream"
            received += chunk
    assert _settled(stack, before) == [("cancelled", 0)]
    assert httpx.get(stack.fal + "/_fake/stats").json()["cancels"] == cancels + 1


def test_keep_alive_comments_arrive_while_the_upstream_is_slow(stack: Stack) -> None:
    before = len(stack.settled_ledger())
    _fal(stack, "/_fake/faults", {"fault": "hang"})
    body = {"model": "hidream-i1-full", "prompt": "slow", "stream": True}
    lines: list[str] = []
    answered = False
    with httpx.stream(
        "POST", stack.base + "/v1/images/generations", json=body, headers={"Authorization": f"Bearer {stack.key}"},
        timeout=30,
    ) as r:  # fmt: skip
        assert r.headers["cache-control"] == "no-cache"
        for line in r.iter_lines():
            lines.append(line)
            if not answered and lines.count(": keep-alive") == 3:  # the upstream still works: let it answer
                assert _fal(stack, "/_fake/end-hung", {"end": "ok"}) == {"ended": 1}
                answered = True
    events = parse("\n".join(lines) + "\n")
    comments = [e for e in events if e.comment is not None]
    assert len(comments) >= 3 and {e.comment for e in comments} == {"keep-alive"}
    assert [e.event for e in events if e.comment is None] == ["image_generation.completed"]
    assert events[-1].json()["type"] == "image_generation.completed"
    assert _settled(stack, before) == [("succeeded", 50_000)]


def test_javascript_sdk_iterates_streams_and_raises_a_failure_after_the_stream_began(stack: Stack) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the JS SDK test (./dev test installs it)"
    assert (JS / "node_modules" / "openai").is_dir(), "run ./dev test: it installs tests/js from its lock"
    before = len(stack.settled_ledger())
    png = base64.b64encode(_png()).decode()
    done = subprocess.run(
        [node, "streaming.mjs", stack.base + "/v1", stack.key, stack.fal, png],
        cwd=JS, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [e["type"] for e in out["generate"]] == ["image_generation.completed"] * 2
    assert {_decode(e["b64"]).size for e in out["generate"]} == {(256, 256)}
    assert all(e["usage"]["input_tokens_details"] == {"image_tokens": 0, "text_tokens": 0} for e in out["generate"])
    (edit,) = out["edit"]
    assert (edit["type"], edit["output_format"]) == ("image_edit.completed", "webp")
    assert _decode(edit["b64"]).format == "WEBP"
    assert out["ended"] == {"ended": 1}
    assert out["error"] == {"apiError": True, "name": "APIError", "status": None, "type": "server_error"}
    wait_for(lambda: len(stack.ledger()) >= before + 3, "the three requests to be settled")
    assert stack.ledger()[before:] == [("succeeded", 100_000), ("succeeded", 50_000), ("failed", 0)]
