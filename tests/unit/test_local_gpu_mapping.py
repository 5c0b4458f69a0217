"""The local GPU adapter's pure mapping: request body, response checks, /ready reports, errors."""

from __future__ import annotations

import base64
import io
import json
from email.utils import formatdate

import pytest
from PIL import Image

from providers.base import (
    ErrorKind,
    ImageRequest,
    InputImage,
    ProviderBadResponseError,
    ProviderRejectedInputError,
    RouteTarget,
)
from providers.local_gpu.mapping import (
    error_from_response,
    generation_body,
    parse_generation,
    parse_ready,
    retry_after_s,
)

TARGET = RouteTarget("local_gpu", "hidream-i1-dev", "hidream-i1-dev", None, 4)


def request(**kw: object) -> ImageRequest:
    fields: dict[str, object] = {
        "request_id": "req-1",
        "model": "hidream-i1-dev",
        "prompt": "a lighthouse",
        "n": 2,
        "width": 1360,
        "height": 768,
        "response_format": "url",
        "num_inference_steps": 28,
        "guidance_scale": None,
    }
    fields.update(kw)
    return ImageRequest(**fields)  # type: ignore[arg-type]


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def response(images: list[bytes], **extra: object) -> bytes:
    data = [{"b64_json": base64.b64encode(i).decode(), "revised_prompt": "a lighthouse"} for i in images]
    return json.dumps({"created": 1, "data": data, "seed": 7, **extra}).encode()


HEADERS = {"x-actual-size": "1360x768", "x-request-id": "w-9", "x-queue-ms": "250", "x-infer-ms": "1500"}


def test_body_carries_the_route_model_and_only_the_fields_that_are_set() -> None:
    body = generation_body(TARGET, request())
    assert body == {
        "model": "hidream-i1-dev",
        "prompt": "a lighthouse",
        "n": 2,
        "size": "1360x768",
        "response_format": "b64_json",
        "num_inference_steps": 28,
    }
    full = generation_body(TARGET, request(guidance_scale=4.5, negative_prompt="fog", seed=0))
    assert (full["guidance_scale"], full["negative_prompt"], full["seed"]) == (4.5, "fog", 0)


def test_an_edit_is_refused_rather_than_sent_without_its_image() -> None:
    edit = request(images=(InputImage(png(8, 8), "image/png", 8, 8),))
    with pytest.raises(ProviderRejectedInputError) as info:
        generation_body(TARGET, edit)
    assert info.value.param == "image"


def test_a_good_response_becomes_an_image_result() -> None:
    result = parse_generation(HEADERS, response([png(1360, 768), png(1360, 768)]), request())
    assert len(result.images) == 2
    img = result.images[0]
    assert (img.content_type, img.width, img.height) == ("image/png", 1360, 768)
    assert img.data == png(1360, 768)
    assert (result.seed, result.revised_prompt, result.upstream_request_id) == (7, "a lighthouse", "w-9")
    assert result.upstream_latency_s == pytest.approx(1.75)


@pytest.mark.parametrize(
    ("headers", "content", "fragment"),
    [
        (HEADERS, b"<html>", "not an images response"),
        (HEADERS, json.dumps({"created": 1, "data": "x"}).encode(), "not an images response"),
        (HEADERS, response([png(1360, 768)]), "asked for 2 images, got 1"),
        ({**HEADERS, "x-actual-size": "1344x768"}, response([png(1360, 768)] * 2), "the worker made 1344x768"),
        ({}, response([png(1344, 768)] * 2), "got an image of 1344x768"),
        (HEADERS, response([b"GIF89a...", b"GIF89a..."]), "not PNG"),
        (HEADERS, response([b"\x89PNG\r\n\x1a\nbroken"] * 2), "cannot be decoded"),
        (
            HEADERS,
            json.dumps({"created": 1, "data": [{"b64_json": "!!not base64!!"}] * 2}).encode(),
            "not valid base64",
        ),
    ],
)
def test_a_response_that_breaks_the_protocol_is_a_bad_response(
    headers: dict[str, str], content: bytes, fragment: str
) -> None:
    with pytest.raises(ProviderBadResponseError, match=fragment) as info:
        parse_generation(headers, content, request())
    assert info.value.retryable


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, ErrorKind.RATE_LIMITED),
        (503, ErrorKind.NOT_READY),
        (400, ErrorKind.REJECTED_INPUT),
        (422, ErrorKind.REJECTED_INPUT),
        (401, ErrorKind.AUTH),
        (404, ErrorKind.UNAVAILABLE),
        (500, ErrorKind.UNAVAILABLE),
        (502, ErrorKind.UNAVAILABLE),
        (418, ErrorKind.BAD_RESPONSE),
    ],
)
def test_worker_errors_map_by_status(status: int, kind: ErrorKind) -> None:
    body = json.dumps({"error": {"message": "m", "type": "t", "param": "size", "code": "c"}}).encode()
    err = error_from_response(status, {"retry-after": "3"}, body)
    assert err.kind == kind
    assert err.provider == "local_gpu" and err.upstream_status == status
    if kind in (ErrorKind.RATE_LIMITED, ErrorKind.NOT_READY):
        assert err.retry_after_s == 3.0
    if kind == ErrorKind.REJECTED_INPUT:
        assert err.param == "size" and err.message == "m"


def test_busy_without_retry_after_still_says_when_to_come_back() -> None:
    err = error_from_response(429, {}, b"not json")
    assert err.retry_after_s is not None and err.retry_after_s > 0


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after_s({"retry-after": "12"}) == 12.0
    assert retry_after_s({"retry-after": formatdate(1_000_030, usegmt=True)}, now=1_000_000) == pytest.approx(30.0)
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({"retry-after": "-5"}) is None
    assert retry_after_s({}) is None


def test_ready_reports() -> None:
    body = {"model": "hidream-i1-full", "ready": True, "expected_wait_s": 12.5, "queue_depth": 2, "in_flight": 1}
    ok = parse_ready(200, {}, json.dumps({**body, "ewma_latency_s": 6.0}).encode())
    assert (ok.model, ok.ready, ok.expected_wait_s, ok.queue_depth, ok.ewma_latency_s) == (
        "hidream-i1-full",
        True,
        12.5,
        2,
        6.0,
    )
    loading = parse_ready(503, {"retry-after": "10"}, json.dumps({**body, "ready": False}).encode())
    assert not loading.ready and loading.retry_after_s == 10.0
    with pytest.raises(ProviderBadResponseError):
        parse_ready(200, {}, b"OK")
    with pytest.raises(ProviderBadResponseError):
        parse_ready(404, {}, json.dumps(body).encode())


def test_png_size_is_read_from_the_header_as_pil_reads_it() -> None:
    import io as _io

    from PIL import Image as _Image

    from providers.base import png_size

    for w, h in ((1024, 1024), (1360, 768), (1, 3)):
        buf = _io.BytesIO()
        _Image.new("RGB", (w, h)).save(buf, "PNG")
        assert png_size(buf.getvalue()) == (w, h)
    assert png_size(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8) is None  # too short to hold an IHDR


def test_one_images_time_comes_from_the_workers_time_per_unit_not_its_ewma_of_whole_jobs() -> None:
    body = {"model": "hidream-i1-full", "ready": True, "ewma_latency_s": 25.0, "seconds_per_step_image": 0.1,
            "default_steps": 50, "default_guidance_scale": 5.0}  # fmt: skip
    # 50 steps, doubled under guidance: 10 s an image, though recent jobs of several images took 25 s
    assert parse_ready(200, {}, json.dumps(body).encode()).per_image_s == 10.0
    older = {k: v for k, v in body.items() if k in ("model", "ready", "ewma_latency_s")}
    assert parse_ready(200, {}, json.dumps(older).encode()).per_image_s == 25.0
