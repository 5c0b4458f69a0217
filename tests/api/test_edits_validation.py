"""Edits: bad uploads get the right status, name the parameter and cost nothing (no provider needed:
they are refused before any route is chosen)."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.conftest import admin_headers
from tests.unit.test_validation import bomb_png


def png(w: int = 64, h: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "green").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def key(bare_client: TestClient) -> str:
    team = bare_client.post("/admin/teams", json={"name": "e"}, headers=admin_headers()).json()
    k: str = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    return k


def _edit(client: TestClient, key: str, files: list[tuple[str, tuple[str, bytes, str]]], **fields: str) -> dict:  # type: ignore[type-arg]
    r = client.post(
        "/v1/images/edits",
        data={"model": "hidream-i1-full", "prompt": "edit", **fields},
        files=files,
        headers={"Authorization": f"Bearer {key}"},
    )
    return {"status": r.status_code, **r.json()["error"]} if r.status_code >= 400 else {"status": r.status_code}


@pytest.mark.parametrize(
    ("files", "fields", "status", "param", "code"),
    [
        ([("image", ("a.png", b"not an image at all", "image/png"))], {}, 400, "image", "invalid_image_format"),
        ([("image", ("a.png", png(300, 300)[:200], "image/png"))], {}, 400, "image", "invalid_image"),
        ([("image", ("a.png", bomb_png(100_000, 100_000), "image/png"))], {}, 400, "image", "image_too_large"),
        (
            [("image[]", ("a.png", png(), "image/png")), ("image[]", ("b.png", png(), "image/png"))],
            {},
            400,
            "image",
            None,
        ),
        ([("image", ("a.png", png(), "image/png")), ("mask", ("m.png", png(), "image/png"))], {}, 400, "mask", None),
        ([("image", ("a.png", png(), "image/png"))], {"strength": "2"}, 400, "strength", None),
        ([("image", ("a.png", png(), "image/png"))], {"n": "many"}, 400, "n", None),
        ([("image", ("a.png", png(), "image/png"))], {"model": "hidream-i1-dev"}, 400, "model", None),
        ([("image", ("a.png", b"", "image/png"))], {}, 400, "image", None),
        ([("photo", ("a.png", png(), "image/png"))], {}, 400, "photo", None),
        ([("image", ("a.png", png(), "image/png"))], {"prompt": "a\x00cat"}, 400, "prompt", "invalid_text"),
        ([("image", ("a.png", png(), "image/png"))], {"negative_prompt": "\x00"}, 400, "negative_prompt", None),
    ],
)
def test_bad_uploads_name_their_parameter_and_cost_nothing(
    bare_client: TestClient,
    key: str,
    files: list[tuple[str, tuple[str, bytes, str]]],
    fields: dict[str, str],
    status: int,
    param: str,
    code: str | None,
) -> None:
    got = _edit(bare_client, key, files, **fields)
    assert (got["status"], got["param"]) == (status, param), got
    if code is not None:
        assert got["code"] == code
    usage = bare_client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    # A truncated image is found by the full decode, which runs once the edit is admitted: it is
    # settled as a failed request, charged nothing. Everything else is refused before admission.
    settled = int(code == "invalid_image")
    assert (usage["requests"], usage["failed_requests"]) == (settled, settled)
    assert usage["spent_usd"] == 0 and usage["reserved_usd"] == 0


def test_missing_image_is_named(bare_client: TestClient, key: str) -> None:
    r = bare_client.post(
        "/v1/images/edits",
        files={"prompt": (None, b"x"), "model": (None, b"hidream-i1-full")},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("image", "missing_required_parameter")


def test_upload_over_the_size_limit_is_413(bare_client: TestClient, key: str) -> None:
    limit = bare_client.app.state.gateway.settings.max_upload_bytes  # type: ignore[attr-defined]
    big = png() + b"\0" * (limit + 10)
    got = _edit(bare_client, key, [("image", ("big.png", big, "image/png"))])
    assert (got["status"], got["param"]) == (413, "image")


def test_edits_need_multipart(bare_client: TestClient, key: str) -> None:
    r = bare_client.post(
        "/v1/images/edits", json={"prompt": "x", "image": "aGVsbG8="}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_a_form_cut_before_its_closing_boundary_is_refused_not_read_without_its_last_part(
    bare_client: TestClient, key: str
) -> None:
    """Starlette's form parser dropped an unterminated last part without a word: here the mask,
    and the edit would have run without it."""
    boundary = "cut-form"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + data + b"\r\n"
        for name, extra, data in [
            ("model", "", b"hidream-i1-full"), ("prompt", "", b"edit"),
            ("image", '; filename="a.png"', png()), ("mask", '; filename="m.png"', png()),
        ]
    )  # no closing --cut-form--  # fmt: skip
    r = bare_client.post(
        "/v1/images/edits",
        content=body,
        headers={"Authorization": f"Bearer {key}", "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_multipart"
    usage = bare_client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    assert usage["spent_usd"] == 0 and usage["failed_requests"] == 0  # refused before admission
