"""Partial images and progress end to end: the gateway as real processes before a GPU worker (the
real worker app with the stand-in pipeline, whose latents it previews as on a real GPU) and the
fake fal, both real SDKs iterating partial then completed events; each image of n=2 sent as it is
made; progress events only when asked; a caller that leaves after its first image is charged
nothing and the worker's job is cancelled."""

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
from openai.types import ImageGenCompletedEvent, ImageGenPartialImageEvent
from PIL import Image

from tests.api.conftest import wait_for
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import RunningWorker, running_worker, wait_until
from tests.integration.gateway_stack import Stack, running_stack
from tests.raw_http import connect, read_response, request_head
from tests.redis_server import RedisServer
from tests.sse import parse

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parents[1] / "js"
GPU = {"x-gateway-provider": "local_gpu"}
FAL = {"x-gateway-provider": "fal"}


@pytest.fixture(scope="module")
def worker() -> Iterator[RunningWorker]:
    with running_worker("full", max_queue=4, pipeline=StandInPipeline(step_s=0.02)) as made:
        yield made


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, worker: RunningWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = {"GATEWAY_STREAM_KEEPALIVE_S": "0.05", "GATEWAY_LOCAL_GPU_URLS": worker.url}
    with running_stack(
        redis_server, tmp_path_factory.mktemp("previews"), gateway_env=env, team={"allow_provider_pinning": True}
    ) as made:
        yield made


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _settled(stack: Stack, before: int) -> list[tuple[str, int]]:
    wait_for(lambda: len(stack.ledger()) > before, "the request to be settled")
    return stack.ledger()[before:]


def test_python_sdk_gets_partial_images_from_the_worker_then_the_completed_image(stack: Stack) -> None:
    before = len(stack.settled_ledger())
    stream = stack.client(strict=True).images.generate(
        model="hidream-i1-full", prompt="a lighthouse", size="512x512", output_format="webp", stream=True,
        partial_images=2, extra_headers=GPU, extra_body={"num_inference_steps": 6},
    )  # fmt: skip
    assert "partial_images" not in stream.response.headers.get("x-gateway-ignored-params", "")
    events = list(stream)
    assert [type(e) for e in events] == [ImageGenPartialImageEvent] * 2 + [ImageGenCompletedEvent]
    partials, completed = events[:2], events[2]
    assert [p.partial_image_index for p in partials] == [0, 1]
    for p in partials:
        assert (p.type, p.size, p.output_format, p.quality, p.background) == (
            "image_generation.partial_image", "512x512", "webp", "high", "opaque"
        )  # fmt: skip
        picture = _decode(p.b64_json)  # a 128x128 preview of the 1024x1024 job, scaled and encoded as asked
        assert (picture.format, picture.size) == ("WEBP", (512, 512))
    assert [(p.model_extra or {})["gateway"]["step"] for p in partials] == [2, 4]
    assert partials[0].b64_json != partials[1].b64_json
    assert completed.output_format == "webp" and _decode(completed.b64_json).size == (512, 512)
    assert (completed.model_extra or {})["gateway"]["ignored_params"] == []
    assert _settled(stack, before) == [("succeeded", 50_000)]


def test_each_of_two_images_is_sent_as_soon_as_it_is_made(stack: Stack, worker: RunningWorker) -> None:
    before = len(stack.settled_ledger())
    worker.pipeline.plan("normal")
    worker.pipeline.plan("hold")  # the second image's job runs until the test has the first image
    stream = stack.client(strict=True).images.generate(
        model="hidream-i1-full", prompt="two boats", n=2, size="256x256", stream=True, partial_images=1,
        extra_headers=GPU, extra_body={"num_inference_steps": 4, "seed": 11},
    )  # fmt: skip
    events = []
    for event in stream:
        events.append(event)
        if isinstance(event, ImageGenCompletedEvent) and not worker.pipeline.release.is_set():
            assert worker.pipeline.holding.is_set()  # the other image is still being made
            worker.pipeline.release.set()
    completed = [e for e in events if isinstance(e, ImageGenCompletedEvent)]
    assert len(completed) == 2 and sorted((e.model_extra or {})["seed"] for e in completed) == [11, 12]
    partials = [e for e in events if isinstance(e, ImageGenPartialImageEvent)]
    assert sorted((e.model_extra or {})["gateway"]["image_index"] for e in partials) == [0, 1]
    assert _settled(stack, before) == [("succeeded", 100_000)]


def test_a_fal_stream_has_no_partial_images_and_names_them_ignored(stack: Stack) -> None:
    before = len(stack.settled_ledger())
    stream = stack.client(strict=True).images.generate(
        model="hidream-i1-full", prompt="a dune", size="256x256", stream=True, partial_images=3, extra_headers=FAL
    )
    (event,) = list(stream)
    assert isinstance(event, ImageGenCompletedEvent)
    assert (event.model_extra or {})["gateway"]["ignored_params"] == ["partial_images"]
    assert _settled(stack, before) == [("succeeded", 50_000)]


def _raw_stream(stack: Stack, headers: dict[str, str], **body: object) -> list[dict[str, object]]:
    payload = {"model": "hidream-i1-full", "prompt": "raw", "stream": True, **body}
    with httpx.stream(
        "POST", stack.base + "/v1/images/generations", json=payload,
        headers={"Authorization": f"Bearer {stack.key}", **headers}, timeout=60,
    ) as r:  # fmt: skip
        assert r.status_code == 200
        text = "".join(r.iter_text())
    return [e.json() for e in parse(text) if e.comment is None]


def test_progress_events_come_only_when_asked(stack: Stack) -> None:
    plain = _raw_stream(stack, GPU, num_inference_steps=3)
    assert [e["type"] for e in plain] == ["image_generation.completed"]
    asked = _raw_stream(stack, {**GPU, "x-gateway-progress": "true"}, num_inference_steps=3)
    progress = [e for e in asked if e["type"] == "gateway.progress"]
    assert asked[-1]["type"] == "image_generation.completed"
    assert progress[0]["queue_position"] == 0 and progress[0]["expected_s"] is not None  # the worker's queued line
    assert [e["step"] for e in progress if e["step"] is not None] == [1, 2, 3]
    assert all(e["steps"] == 3 for e in progress if e["step"] is not None)


def test_fal_progress_reports_the_queue_and_the_python_sdk_reads_it_only_leniently(stack: Stack) -> None:
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "hang"}, timeout=10).raise_for_status()
    lenient = stack.client().images.generate(
        model="hidream-i1-full",
        prompt="slow",
        size="256x256",
        stream=True,
        extra_headers={**FAL, "x-gateway-progress": "true"},
    )
    seen = []
    for event in lenient:
        seen.append(event)
        if event.type == "gateway.progress" and len(seen) == 1:
            assert httpx.post(stack.fal + "/_fake/end-hung", json={"end": "ok"}, timeout=10).json() == {"ended": 1}
    assert seen[0].type == "gateway.progress" and (seen[0].model_extra or {}).get("queue_position") is not None
    assert seen[-1].type == "image_generation.completed"
    # Strict validation knows OpenAI's two event types only: the opt-in is for callers that read it.
    before = len(stack.settled_ledger())  # the lenient request's settlement included
    strict = stack.client(strict=True).images.generate(
        model="hidream-i1-full", prompt="strict", stream=True, extra_headers={**GPU, "x-gateway-progress": "true"},
        extra_body={"num_inference_steps": 2},
    )  # fmt: skip
    with pytest.raises(openai.APIResponseValidationError):
        list(strict)
    assert _settled(stack, before) == [("cancelled", 0)]  # the SDK closed the stream at the first


def test_a_caller_that_leaves_after_its_first_image_is_charged_nothing_and_the_worker_job_is_cancelled(
    stack: Stack, worker: RunningWorker
) -> None:
    before = len(stack.settled_ledger())
    worker.pipeline.plan("normal")
    worker.pipeline.plan("hang")  # the second image's job runs until it is cancelled
    body = json.dumps({"model": "hidream-i1-full", "prompt": "left early", "n": 2, "stream": True,
                       "num_inference_steps": 2}).encode()  # fmt: skip
    headers = {"authorization": f"Bearer {stack.key}", "content-type": "application/json",
               "content-length": str(len(body)), **GPU}  # fmt: skip
    with connect(stack.base) as sock:
        sock.sendall(request_head("POST", "/v1/images/generations", headers) + body)
        head = read_response(sock)
        assert head.status == 200
        received = b""
        while b"image_generation.completed" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the gateway closed the stream"
            received += chunk
        wait_until(worker.pipeline.holding.is_set, "the second job to run")
    # Admitted, and charged, as a whole: one image of two was handed over, the request is not.
    assert _settled(stack, before) == [("cancelled", 0)]
    mine = lambda: [c for c in worker.pipeline.calls if c.prompt == "left early"]  # noqa: E731
    wait_until(lambda: len(mine()) == 2, "the worker's second job to stop")
    assert [c.interrupted for c in mine()] == [False, True]  # the first was made, the second cancelled


def test_javascript_sdk_iterates_partials_and_progress_events(stack: Stack) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the JS SDK test (./dev test installs it)"
    before = len(stack.settled_ledger())
    done = subprocess.run(
        [node, "previews.mjs", stack.base + "/v1", stack.key], cwd=JS, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [e["type"] for e in out["partials"]] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert [e["index"] for e in out["partials"][:2]] == [0, 1]
    assert {_decode(e["b64"]).size for e in out["partials"]} == {(256, 256)}
    types = [e["type"] for e in out["progress"]]
    assert types[-1] == "image_generation.completed" and set(types[:-1]) == {"gateway.progress"}
    wait_for(lambda: len(stack.ledger()) >= before + 2, "the two requests to be settled")
    assert stack.ledger()[before:] == [("succeeded", 50_000), ("succeeded", 50_000)]
