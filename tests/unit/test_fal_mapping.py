"""The fal adapter's pure transforms: input body, queue replies, output, and every error mapping."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from providers.base import (
    ImageRequest,
    InputImage,
    ProviderAuthError,
    ProviderBadResponseError,
    ProviderContentPolicyError,
    ProviderRejectedInputError,
    RouteTarget,
)
from providers.fal import mapping

TARGET = RouteTarget("fal", "hidream-i1-full", "fal-ai/hidream-i1-full", "fal-ai/hidream-i1-full/image-to-image", 4)
QUEUE = "https://queue.fal.run"


def png(w: int = 32, h: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def req(**kw: object) -> ImageRequest:
    fields: dict[str, object] = {
        "request_id": "r1", "model": "hidream-i1-full", "prompt": "a fox", "n": 2, "width": 1024, "height": 1024,
        "response_format": "url", "num_inference_steps": 20, "guidance_scale": 5.0,
    }  # fmt: skip
    fields.update(kw)
    return ImageRequest(**fields)  # type: ignore[arg-type]


def body(data: object) -> bytes:
    return json.dumps(data).encode()


# --- input ----------------------------------------------------------------------------------------


def test_generation_input_carries_every_parameter_under_fal_names() -> None:
    out = mapping.fal_input(req(seed=7, negative_prompt="blur"))
    assert out == {
        "prompt": "a fox", "image_size": "square_hd", "num_inference_steps": 20, "num_images": 2,
        "output_format": "png", "enable_safety_checker": True, "sync_mode": False, "guidance_scale": 5.0,
        "negative_prompt": "blur", "seed": 7,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 768), "landscape_4_3"),
        ((576, 1024), "portrait_16_9"),
        ((512, 512), "square"),
        ((1360, 768), {"width": 1360, "height": 768}),
        ((768, 1024 + 8), {"width": 768, "height": 1032}),
    ],
)
def test_size_is_a_preset_only_on_an_exact_match(size: tuple[int, int], expected: object) -> None:
    assert mapping.fal_input(req(width=size[0], height=size[1]))["image_size"] == expected


def test_unset_guidance_seed_and_negative_prompt_are_left_out() -> None:
    out = mapping.fal_input(req(guidance_scale=None))
    assert "guidance_scale" not in out and "seed" not in out and "negative_prompt" not in out


def test_b64_json_asks_for_sync_mode() -> None:
    assert mapping.fal_input(req(response_format="b64_json"))["sync_mode"] is True


def test_edit_sends_the_image_as_a_data_uri_with_strength_to_the_image_to_image_endpoint() -> None:
    data = png()
    edit = req(images=(InputImage(data, "image/png", 32, 24),), strength=0.4)
    sent = mapping.submit_body(edit)
    out = json.loads(b"".join(sent.pieces()))
    assert out["image_url"] == "data:image/png;base64," + base64.b64encode(data).decode()
    assert out["strength"] == 0.4
    assert {k: v for k, v in out.items() if k != "image_url"} == mapping.fal_input(edit)
    assert mapping.endpoint_for(TARGET, edit) == "fal-ai/hidream-i1-full/image-to-image"
    assert mapping.endpoint_for(TARGET, req()) == "fal-ai/hidream-i1-full"


@pytest.mark.parametrize("extra", [0, 1, 2])  # sizes that leave 0, 1 or 2 bytes past a multiple of 3
def test_a_large_edit_image_is_sent_in_pieces_that_join_to_one_exact_data_uri(extra: int) -> None:
    data = bytes(range(256)) * (2 * mapping.DATA_URI_PIECE // 256) + b"\x89" * extra
    edit = req(images=(InputImage(data, "image/webp", 1, 1),), prompt='a "quoted" fox')
    sent = mapping.submit_body(edit)
    pieces = list(sent.pieces())
    assert len(pieces) >= 4  # head, at least three pieces of the image, tail
    assert max(len(p) for p in pieces) <= 4 * mapping.DATA_URI_PIECE // 3  # no piece holds the whole image
    joined = b"".join(pieces)
    assert len(joined) == sent.length
    out = json.loads(joined)
    assert out["image_url"] == "data:image/webp;base64," + base64.b64encode(data).decode()
    assert out["prompt"] == 'a "quoted" fox'


def test_a_generation_body_is_the_input_as_json() -> None:
    sent = mapping.submit_body(req(seed=3))
    joined = b"".join(sent.pieces())
    assert len(joined) == sent.length and json.loads(joined) == mapping.fal_input(req(seed=3))


def test_edits_fal_cannot_do_are_refused_naming_the_parameter() -> None:
    image = InputImage(png(), "image/png", 32, 24)
    no_edit = RouteTarget("fal", "hidream-i1-dev", "fal-ai/hidream-i1-dev", None, 4)
    with pytest.raises(ProviderRejectedInputError) as info:
        mapping.endpoint_for(no_edit, req(images=(image,)))
    assert info.value.param == "image"
    with pytest.raises(ProviderRejectedInputError) as info:
        mapping.endpoint_for(TARGET, req(images=(image,), mask=image))
    assert info.value.param == "mask"


@pytest.mark.parametrize(
    ("model", "app"),
    [
        ("fal-ai/hidream-i1-full/image-to-image", "fal-ai/hidream-i1-full"),
        ("fal-ai/hidream-i1-dev", "fal-ai/hidream-i1-dev"),
        ("workflows/me/flow/x", "workflows/me/flow"),
    ],
)
def test_app_id_drops_the_sub_path(model: str, app: str) -> None:
    assert mapping.app_id(model) == app


# --- queue replies --------------------------------------------------------------------------------

SUBMITTED = {
    "status": "IN_QUEUE",
    "request_id": "abc",
    "response_url": f"{QUEUE}/fal-ai/hidream-i1-full/requests/abc",
    "status_url": f"{QUEUE}/fal-ai/hidream-i1-full/requests/abc/status",
    "cancel_url": f"{QUEUE}/fal-ai/hidream-i1-full/requests/abc/cancel",
    "logs": None,
    "queue_position": 0,
}


def test_submission_keeps_the_returned_urls_as_given() -> None:
    sub = mapping.parse_submission(body(SUBMITTED), queue_url=QUEUE)
    assert (sub.request_id, sub.status_url, sub.response_url, sub.cancel_url) == (
        "abc", SUBMITTED["status_url"], SUBMITTED["response_url"], SUBMITTED["cancel_url"],
    )  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"cancel_url": None},
        {"request_id": 5},
        {"status_url": "https://evil.example/fal-ai/x/requests/abc/status"},
        {"response_url": "/fal-ai/hidream-i1-full/requests/abc"},
    ],
)
def test_submission_without_a_url_or_pointing_elsewhere_is_bad(change: dict[str, object]) -> None:
    with pytest.raises(ProviderBadResponseError):
        mapping.parse_submission(body({**SUBMITTED, **change}), queue_url=QUEUE)


def test_status_replies_parse_by_their_state() -> None:
    queued = mapping.parse_status(202, {}, body({"status": "IN_QUEUE", "queue_position": 3}))
    assert queued.state == "IN_QUEUE" and queued.queue_position == 3
    assert mapping.parse_status(202, {}, body({"status": "IN_PROGRESS", "logs": None})).state == "IN_PROGRESS"
    done = mapping.parse_status(
        200, {}, body({"status": "COMPLETED", "logs": [], "error": "Runner disconnected", "error_type": "x"})
    )
    assert (done.state, done.error, done.error_type) == ("COMPLETED", "Runner disconnected", "x")


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (202, {"status": "IN_QUEUE"}),  # no queue_position
        (202, {"status": "IN_QUEUE", "queue_position": "1"}),
        (202, {"status": "IN_PROGRESS"}),  # no logs key
        (200, {"status": "IN_PROGRESS", "logs": []}),  # running but 200
        (202, {"status": "COMPLETED", "logs": []}),  # completed but 202
        (200, {"status": "FAILED", "logs": []}),
        (200, ["COMPLETED"]),
    ],
)
def test_status_replies_that_break_the_protocol_are_bad(code: int, data: object) -> None:
    with pytest.raises(ProviderBadResponseError):
        mapping.parse_status(code, {}, body(data))


def test_status_replies_nested_past_the_recursion_limit_are_bad() -> None:
    with pytest.raises(ProviderBadResponseError):
        mapping.parse_status(202, {}, b"[" * 5000 + b"]" * 5000)


def test_stream_events_parse_like_poll_replies_without_an_http_code() -> None:
    queued = mapping.parse_status_event(json.dumps({"status": "IN_QUEUE", "queue_position": 0}))
    assert (queued.state, queued.queue_position) == ("IN_QUEUE", 0)
    done = mapping.parse_status_event(json.dumps({"status": "COMPLETED", "logs": None, "error_type": "x"}))
    assert (done.state, done.error_type) == ("COMPLETED", "x")
    for broken in ('{"status": "IN_QUEUE"}', '{"status": "COMPLETED"}', "not json", '{"status": "FAILED"}'):
        with pytest.raises(ProviderBadResponseError):
            mapping.parse_status_event(broken)


def test_the_event_stream_decoder_yields_each_events_data_and_skips_comments() -> None:
    lines = [
        ": keep-alive", "",  # a comment alone is no event
        'data: {"status": "IN_QUEUE",', 'data:"queue_position": 0}', "id: 7", "",  # two data lines, one event
        "event: status", 'data: {"status": "IN_PROGRESS", "logs": []}', "",
        "data: trailing without its blank line",
    ]  # fmt: skip
    decoder = mapping.EventStreamDecoder()
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert events == ['{"status": "IN_QUEUE",\n"queue_position": 0}', '{"status": "IN_PROGRESS", "logs": []}']
    assert [mapping.parse_status_event(e).state for e in events] == ["IN_QUEUE", "IN_PROGRESS"]


def test_non_2xx_status_reply_is_mapped_as_an_error() -> None:
    with pytest.raises(ProviderAuthError):
        mapping.parse_status(401, {}, body({"detail": "No user found for Key ID and Secret"}))


@pytest.mark.parametrize(
    ("code", "headers", "ingress"),
    [
        (502, {}, True),
        (503, {"Content-Type": "text/html"}, True),
        (503, {"X-Fal-Request-Id": "a"}, False),
        (500, {}, False),
    ],
)
def test_ingress_errors_are_5xx_without_a_fal_request_id(code: int, headers: dict[str, str], ingress: bool) -> None:
    assert mapping.is_ingress_error(code, headers) is ingress


# --- output ---------------------------------------------------------------------------------------


def test_data_uris_decode_to_bytes_with_the_real_type_and_size() -> None:
    data = png(40, 30)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    out = {"images": [{"url": uri, "width": 1, "height": 1, "content_type": "image/jpeg"}], "seed": 2**60,
           "prompt": "a fox, refined", "has_nsfw_concepts": [False], "timings": {}}  # fmt: skip
    result = mapping.result_from_output(body(out), upstream_request_id="abc")
    (image,) = result.images
    assert image.data == data and image.url is None
    assert image.b64 == uri.split(",", 1)[1]  # fal's base64 is kept for a b64_json answer
    assert (image.content_type, image.width, image.height) == ("image/png", 40, 30)
    assert (result.seed, result.revised_prompt, result.upstream_request_id) == (2**60, "a fox, refined", "abc")


def test_cdn_urls_pass_through_with_their_declared_size() -> None:
    url = "https://v3.fal.media/files/lion/x.png"
    out = {"images": [{"url": url, "width": 1360, "height": 768, "content_type": "image/png"}], "seed": 5}
    (image,) = mapping.result_from_output(body(out)).images
    assert (image.url, image.data, image.width, image.height) == (url, None, 1360, 768)


@pytest.mark.parametrize(
    "out",
    [
        b"not json",
        body([]),
        body({"image": []}),
        body({"images": "x"}),
        body({"images": []}),
        body({"images": [{"content_type": "image/png"}]}),
        body({"images": [{"url": "https://x/a.png", "width": "1024", "height": 1024}]}),
        body({"images": [{"url": "https://x/a.png"}]}),  # a CDN URL without its size
        body({"images": [{"url": "ftp://x/a.png", "width": 1, "height": 1}]}),
        body({"images": [{"url": "data:image/png,abc"}]}),
        body({"images": [{"url": "data:image/png;base64,@@@"}]}),
        body({"images": [{"url": "data:image/png;base64," + base64.b64encode(b"text").decode()}]}),
        body({"images": [{"url": "https://x/a.png", "width": 1, "height": 1}], "seed": 1.5}),
        b'{"images": [], "seed": 1' + b"0" * 5000 + b"}",  # past Python's 4,300-digit limit for int()
        b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # past json.loads' recursion limit
    ],
)
def test_output_that_is_not_the_hidream_shape_is_a_bad_response(out: bytes) -> None:
    with pytest.raises(ProviderBadResponseError):
        mapping.result_from_output(out)


def test_output_flagged_by_the_safety_checker_is_a_content_policy_error() -> None:
    out = {"images": [{"url": "https://x/a.png", "width": 1, "height": 1}], "has_nsfw_concepts": [True]}
    with pytest.raises(ProviderContentPolicyError):
        mapping.result_from_output(body(out))
