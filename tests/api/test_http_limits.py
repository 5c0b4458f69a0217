"""What a caller may send before the app sees its request, enforced by the gateway's HTTP protocol
over real sockets: the header block's size and field count (431), and bytes that are not HTTP
(400), each answered in OpenAI's shape and closed."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from gateway.api.server import HttpLimits, http_protocol
from gateway.app import create_app
from gateway.settings import Settings
from tests.fakes.server import serve_in_thread
from tests.raw_http import RawResponse, closed_by_server, connect, read_response, request_head

NO_PROVIDERS = {"fal": lambda s: None, "local_gpu": lambda s: None}


def _serve(settings: Settings) -> Iterator[str]:
    app = create_app(settings, registry=NO_PROVIDERS)
    with serve_in_thread(app, http=http_protocol(HttpLimits.from_settings(settings))) as url:
        yield url


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    """The gateway with its default limits."""
    yield from _serve(settings)


def _assert_openai_error(r: RawResponse, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.headers["content-type"] == "application/json" and r.headers["x-request-id"].startswith("req_")
    body = r.json()
    assert list(body) == ["error"] and body["error"].pop("message")
    assert body["error"] == {"type": "invalid_request_error", "param": None, "code": code}


# --- the header block ----------------------------------------------------------------------


def test_a_header_block_past_the_cap_gets_431_and_the_connection_is_closed(url: str) -> None:
    with connect(url) as sock:
        sock.sendall(request_head("GET", "/health", {"x-big": "a" * 64 * 1024}))
        r = read_response(sock)
        _assert_openai_error(r, 431, "request_header_fields_too_large")
        assert r.headers["connection"] == "close" and closed_by_server(sock)
    with connect(url) as sock:  # just under the cap is served
        sock.sendall(request_head("GET", "/health", {"x-big": "a" * 60 * 1024}))
        assert read_response(sock).status == 200


def test_more_header_fields_than_the_cap_get_431(url: str) -> None:
    def with_fields(n: int) -> RawResponse:  # host and n - 1 more
        with connect(url) as sock:
            sock.sendall(request_head("GET", "/health", {f"x-h{i}": "1" for i in range(n - 1)}))
            return read_response(sock)

    assert with_fields(100).status == 200
    _assert_openai_error(with_fields(101), 431, "request_header_fields_too_large")


def test_a_huge_header_is_refused_without_being_held_in_memory(url: str) -> None:
    chunk = b"a" * 64 * 1024
    sent = 0
    tracemalloc.start()
    try:
        with connect(url) as sock:
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\nx-big: ")
                while sent < 16 * 1024 * 1024:  # 16 MiB of one header, as long as the server reads
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        _, peak = tracemalloc.get_traced_memory()  # allocations of both the server and this test
    finally:
        tracemalloc.stop()
    assert sent < 16 * 1024 * 1024  # the server stopped reading and closed
    assert peak < 4 * 1024 * 1024, peak


def test_bytes_that_are_not_http_get_an_openai_shaped_400(url: str) -> None:
    with connect(url) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        r = read_response(sock)
        _assert_openai_error(r, 400, "malformed_http_request")
        assert closed_by_server(sock)
