"""The edit's multipart reader (gateway/api/edit_form.py), fed as a server would feed it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from gateway.api.edit_form import EditForm, FormLimits, read_edit_form
from gateway.errors import GatewayError, InvalidRequestError, PayloadTooLargeError

BOUNDARY = "b0undary-x"
LIMITS = FormLimits(max_files=3, max_fields=4, max_field_bytes=64, max_file_bytes=1000)


def _body(parts: list[tuple[str, str | None, bytes]], *, close: bool = True) -> bytes:
    """(name, filename or None for a text field, bytes) per part."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: image/png\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _read(
    body: bytes,
    piece: int | None = None,
    *,
    content_type: str | None = None,
    gone: bool = False,
    declared: int | None = -1,
) -> EditForm:
    """`declared`: the content-length the reader is told (-1: the body's own; None: none, chunked)."""
    pieces = [body] if piece is None else [body[i : i + piece] for i in range(0, len(body), piece)]
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)
    ]
    if gone:
        messages = [*messages[: len(messages) // 2], {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    kind = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    length = len(body) if declared == -1 else declared
    return asyncio.run(read_edit_form(kind, receive, LIMITS, length))


def _error(body: bytes, **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        _read(body, **kwargs)
    return info.value


IMAGE_A = bytes(range(256)) * 3  # holds CR, LF and dashes: what a boundary is made of
IMAGE_B = b"\r\n--" + bytes(200) + b"\r\n"
FORM = [
    ("model", None, b"hidream-i1-full"),
    ("image[]", "a.png", IMAGE_A),
    ("prompt", None, "a fox \N{SNOWFLAKE}".encode()),
    ("image[]", "b.png", IMAGE_B),
    ("mask", "m.png", b"mask"),
]


@pytest.mark.parametrize("piece", [None, 1, 7, 64, 1000])
@pytest.mark.parametrize("declared", [-1, None, 10**6, 100])  # exact, none (chunked), too large, too small
def test_a_form_reads_the_same_however_its_body_is_cut(piece: int | None, declared: int | None) -> None:
    form = _read(_body(FORM), piece, declared=declared)
    assert form.fields == [("model", "hidream-i1-full"), ("prompt", "a fox \N{SNOWFLAKE}")]
    assert form.files == [("image[]", IMAGE_A), ("image[]", IMAGE_B), ("mask", b"mask")]
    assert all(isinstance(data, bytes | bytearray) for _, data in form.files)


def test_a_file_is_held_once_in_a_buffer_of_its_own_size() -> None:
    form = _read(_body(FORM), 64)
    assert [type(data) for _, data in form.files] == [bytearray, bytearray, bytearray]
    assert [len(data) for _, data in form.files] == [len(IMAGE_A), len(IMAGE_B), 4]


def test_a_field_that_is_not_utf8_is_read_as_latin1() -> None:
    form = _read(_body([("prompt", None, "caf\N{LATIN SMALL LETTER E WITH ACUTE}".encode("latin-1"))]))
    assert form.fields == [("prompt", "caf\N{LATIN SMALL LETTER E WITH ACUTE}")]


@pytest.mark.parametrize(("name", "param"), [("image", "image"), ("image[]", "image"), ("mask", "mask")])
def test_a_file_past_its_limit_is_413_naming_it(name: str, param: str) -> None:
    error = _error(_body([(name, "x.png", bytes(1001))]), piece=100)
    assert isinstance(error, PayloadTooLargeError) and error.param == param
    assert len(_read(_body([(name, "x.png", bytes(1000))])).files[0][1]) == 1000  # at the limit: read


def test_a_field_past_its_limit_is_400_naming_it() -> None:
    error = _error(_body([("prompt", None, b"p" * 65)]))
    assert isinstance(error, InvalidRequestError) and error.param == "prompt" and error.status_code == 400


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_body([("image", f"{i}.png", b"x") for i in range(4)]), "more than 3 files"),
        (_body([(f"f{i}", None, b"x") for i in range(5)]), "more than 4 fields"),
        (_body(FORM, close=False), "ends before its closing boundary"),
        (_body(FORM)[: len(_body(FORM)) // 2], "ends before its closing boundary"),
        (f'--{BOUNDARY}\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nx\r\n--{BOUNDARY}--\r\n'.encode(),
         'no Content-Disposition "name"'),
        (b"this is not multipart at all", ""),
    ],
)  # fmt: skip
def test_a_body_that_is_not_a_whole_form_is_400_invalid_multipart(body: bytes, says: str) -> None:
    error = _error(body)
    assert (error.status_code, error.code) == (400, "invalid_multipart")
    assert says in error.message


def test_no_boundary_is_400_invalid_multipart() -> None:
    error = _error(_body(FORM), content_type="multipart/form-data")
    assert (error.status_code, error.code) == (400, "invalid_multipart") and "boundary" in error.message


def test_a_caller_gone_mid_body_is_a_disconnect() -> None:
    with pytest.raises(ClientDisconnect):
        _read(_body(FORM), piece=64, gone=True)
