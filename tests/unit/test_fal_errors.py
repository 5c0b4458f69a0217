"""Every fal error answer -> its ProviderError kind, decided by status and structured fields."""

from __future__ import annotations

import json

import pytest

from providers.base import ErrorKind
from providers.fal import errors

NGINX_502 = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"


def detail(field: str | None, type_: str, msg: str = "bad") -> bytes:
    loc = ["body", field] if field else ["body"]
    return json.dumps({"detail": [{"loc": loc, "msg": msg, "type": type_, "input": "secret prompt"}]}).encode()


def infra(error_type: str, text: str = "x") -> bytes:
    return json.dumps({"detail": text, "error_type": error_type}).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind"),
    [
        (401, {}, b'{"detail":"No user found for Key ID and Secret"}', ErrorKind.AUTH),
        (403, {}, b'{"detail":"User is locked. Reason: Exhausted balance."}', ErrorKind.AUTH),
        (429, {}, b"{}", ErrorKind.RATE_LIMITED),
        (422, {}, detail("guidance_scale", "less_than_equal"), ErrorKind.REJECTED_INPUT),
        (422, {}, b'{"detail":"prompt is required"}', ErrorKind.REJECTED_INPUT),
        (422, {}, detail("prompt", "content_policy_violation"), ErrorKind.CONTENT_POLICY),
        (422, {}, detail("image_url", "image_load_error"), ErrorKind.REJECTED_INPUT),
        (422, {}, detail(None, "no_media_generated"), ErrorKind.UNAVAILABLE),
        (422, {}, b"<html>", ErrorKind.BAD_RESPONSE),
        (504, {}, detail(None, "generation_timeout"), ErrorKind.TIMEOUT),
        (504, {"X-Fal-Error-Type": "request_timeout"}, infra("request_timeout"), ErrorKind.TIMEOUT),
        (504, {"X-Fal-Request-Timeout-Type": "user"}, b"{}", ErrorKind.TIMEOUT),
        (504, {}, infra("startup_timeout"), ErrorKind.UNAVAILABLE),
        (503, {}, infra("runner_disconnected"), ErrorKind.UNAVAILABLE),
        (502, {}, infra("runner_incomplete_response"), ErrorKind.UNAVAILABLE),
        (500, {}, detail(None, "internal_server_error"), ErrorKind.UNAVAILABLE),
        (502, {}, NGINX_502, ErrorKind.UNAVAILABLE),
        (500, {}, b"", ErrorKind.UNAVAILABLE),
        (499, {}, infra("client_cancelled"), ErrorKind.CANCELLED),
        (400, {}, detail(None, "downstream_service_error"), ErrorKind.UNAVAILABLE),
        (400, {}, b'{"detail":"Request is still in progress"}', ErrorKind.BAD_RESPONSE),
        (404, {}, b'{"detail":"Application not found"}', ErrorKind.BAD_RESPONSE),
        (418, {}, b"teapot", ErrorKind.BAD_RESPONSE),
        (422, {}, b"[" * 5000 + b"]" * 5000, ErrorKind.BAD_RESPONSE),  # nested past json.loads' recursion limit
        # the header alone names the type when the body does not
        (400, {"x-fal-error-type": "runner_server_error"}, b"oops", ErrorKind.UNAVAILABLE),
    ],
)
def test_error_answers_map_to_their_kind(status: int, headers: dict[str, str], body: bytes, kind: ErrorKind) -> None:
    err = errors.error_from_response(status, headers, body)
    assert err.kind == kind
    assert err.provider == "fal" and err.upstream_status == status
    assert "secret prompt" not in err.message


def test_the_decision_never_reads_message_text() -> None:
    # Same status and structure, different words: same kind.
    a = errors.error_from_response(400, {}, b'{"detail":"Request timed out: content policy, unauthorized"}')
    b = errors.error_from_response(400, {}, b'{"detail":"something else"}')
    assert a.kind == b.kind == ErrorKind.BAD_RESPONSE


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("image_size", "size"),
        ("num_images", "n"),
        ("image_url", "image"),
        ("prompt", "prompt"),
        ("negative_prompt", "negative_prompt"),
        ("guidance_scale", "guidance_scale"),
        ("num_inference_steps", "num_inference_steps"),
        ("seed", "seed"),
        ("strength", "strength"),
        ("loras", "loras"),  # a parameter the caller passed through under fal's own name
    ],
)
def test_rejected_input_names_the_gateway_parameter(field: str, param: str | None) -> None:
    err = errors.error_from_response(422, {}, detail(field, "value_error"))
    assert err.kind == ErrorKind.REJECTED_INPUT and err.param == param
    assert not err.retryable


def test_nested_pydantic_locations_name_the_top_field() -> None:
    body = json.dumps(
        {"detail": [{"loc": ["body", "image_size", "ImageSize", "width"], "msg": "too big", "type": "less_than_equal"}]}
    ).encode()
    assert errors.error_from_response(422, {}, body).param == "size"


def test_content_policy_names_the_flagged_parameter() -> None:
    err = errors.error_from_response(422, {}, detail("image_url", "content_policy_violation"))
    assert err.kind == ErrorKind.CONTENT_POLICY and err.param == "image"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 1.0), ("7", 7.0), ("0.5", 0.5), ("0", 1.0), ("-3", 1.0), ("soon", 1.0), ("inf", 1.0)],
)
def test_rate_limit_retry_after_defaults_to_one_second(value: str | None, seconds: float) -> None:
    err = errors.error_from_response(429, {"Retry-After": value} if value else {}, b"{}")
    assert err.retry_after_s == seconds and err.retryable


def test_retry_after_may_be_an_http_date() -> None:
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert errors.retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("runner_disconnected", ErrorKind.UNAVAILABLE),
        (None, ErrorKind.UNAVAILABLE),
        ("request_timeout", ErrorKind.TIMEOUT),
        ("content_policy_violation", ErrorKind.CONTENT_POLICY),
        ("client_cancelled", ErrorKind.CANCELLED),
    ],
)
def test_a_completed_status_error_maps_by_its_error_type(error_type: str | None, kind: ErrorKind) -> None:
    assert errors.error_from_status(error_type).kind == kind
