"""What a caller may send before the app sees its request, enforced by the gateway's HTTP protocol
over real sockets: the header block's size and field count (431), the time to send headers and
body (408), and bytes that are not HTTP (400), each answered in OpenAI's shape and closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.server import HttpLimits, http_protocol
from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import admin_headers
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


@pytest.fixture
def tight_url(settings: Settings) -> Iterator[str]:
    """The gateway with timeouts short enough to wait for in a test."""
    tight = settings.model_copy(update={"header_timeout_s": 1.0, "body_timeout_s": 1.0, "body_min_rate_bytes_s": 200.0})
    yield from _serve(tight)


def _assert_openai_error(r: RawResponse, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.headers["content-type"] == "application/json" and r.headers["x-request-id"].startswith("req_")
    body = r.json()
    assert list(body) == ["error"] and body["error"].pop("message")
    assert body["error"] == {"type": "invalid_request_error", "param": None, "code": code}


def _team_key(url: str) -> str:
    with httpx.Client(base_url=url, headers=admin_headers(), timeout=30) as admin:
        team = admin.post("/admin/teams", json={"name": "slow"}).json()
        key: str = admin.post(f"/admin/teams/{team['id']}/keys").json()["key"]
        return key


def _generation_head(url: str, content_length: int) -> bytes:
    """The head of an image request by a valid team key (so the app goes on to read the body)."""
    headers = {"authorization": f"Bearer {_team_key(url)}", "content-type": "application/json"}
    return request_head("POST", "/v1/images/generations", {**headers, "content-length": str(content_length)})


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


def test_an_image_request_body_in_pieces_is_read_whole(url: str) -> None:
    body = b'{"model": "hidream-i1-full", "prompt": "a fox", "size": "7x7"}'
    with connect(url) as sock:
        sock.sendall(_generation_head(url, len(body)))
        for i in range(0, len(body), 20):  # three reads apart
            sock.sendall(body[i : i + 20])
            time.sleep(0.05)
        r = read_response(sock)
    # the whole body was parsed: its size is what is refused (a cut body would be a JSON error)
    assert r.status == 400 and r.json()["error"]["param"] == "size", r


def test_an_image_request_body_past_1_mib_is_413(url: str) -> None:
    body = b'{"prompt": "' + b"a" * (1024 * 1024) + b'"}'
    with connect(url) as sock:
        sock.sendall(_generation_head(url, len(body)))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may stop reading at the limit
            sock.sendall(body)
        r = read_response(sock)
    assert r.status == 413 and r.json()["error"]["type"] == "invalid_request_error", r


# --- timeouts ------------------------------------------------------------------------------


def test_headers_that_stop_halfway_get_408_and_the_connection_is_closed(tight_url: str) -> None:
    with connect(tight_url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\nx-half: ")
        r = read_response(sock)  # after the header timeout
        _assert_openai_error(r, 408, "request_timeout")
        assert closed_by_server(sock)


def test_a_connection_that_never_sends_a_byte_is_closed_without_an_answer(tight_url: str) -> None:
    with connect(tight_url) as sock:
        assert sock.recv(1) == b""  # closed after the header timeout, with nothing written


def test_a_body_that_stalls_gets_408_and_the_request_ends_quietly(
    tight_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    head = _generation_head(tight_url, content_length=100)
    with connect(tight_url) as sock:
        sock.sendall(head + b"{")  # one byte of the body, then nothing
        r = read_response(sock)
        _assert_openai_error(r, 408, "request_timeout")
        assert closed_by_server(sock)
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []


def test_a_body_trickled_below_the_minimum_rate_gets_408(tight_url: str) -> None:
    head = _generation_head(tight_url, content_length=200)
    with connect(tight_url) as sock:
        sock.sendall(head)
        sock.settimeout(0.05)  # one byte every 50 ms (20 bytes/s, under the 200 set): never a long pause
        answer = b""
        for _ in range(200):
            sock.sendall(b" ")
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        sock.settimeout(30)
        assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_requests_that_arrive_in_pieces_within_the_timeouts_are_served(tight_url: str) -> None:
    with connect(tight_url) as sock:
        for part in (b"GET /hea", b"lth HTTP/1.1\r\nhost: t", b"est\r\n\r\n"):
            sock.sendall(part)
            time.sleep(0.1)
        assert read_response(sock).status == 200
        time.sleep(1.2)  # idle between requests past the header timeout (the keep-alive timeout is 5 s)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\nGET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        assert read_response(sock).status == 200 and read_response(sock).status == 200  # pipelined
        body = b'{"name": "in pieces"}'
        headers = {**admin_headers(), "content-type": "application/json", "content-length": str(len(body))}
        sock.sendall(request_head("POST", "/admin/teams", headers))
        for i in range(0, len(body), 7):
            time.sleep(0.1)
            sock.sendall(body[i : i + 7])
        assert read_response(sock).status == 201


# --- waits that are the server's own do not count against the caller ---------------------


def _reader_url(path: str, wait_s: float) -> Iterator[str]:
    """An app that reads a request's body only after `wait_s` (as one waiting on Redis might), its
    body timeout 0.5 s."""

    async def read_late(request: Request) -> JSONResponse:
        await asyncio.sleep(wait_s)
        return JSONResponse({"bytes": len(await request.body())})

    limits = HttpLimits(
        max_header_bytes=64 * 1024, max_header_fields=100, header_timeout_s=0.5, body_timeout_s=0.5, body_min_rate=200
    )
    app = Starlette(routes=[Route(path, read_late, methods=["POST"])])
    with serve_in_thread(app, http=http_protocol(limits)) as url:
        yield url


@pytest.fixture
def slow_reader_url() -> Iterator[str]:
    """An app that reads a body only after three body timeouts."""
    yield from _reader_url("/slow", 1.5)


def test_a_body_the_app_has_not_read_yet_is_not_timed_out(slow_reader_url: str) -> None:
    body = b"x" * 1024 * 1024  # far more than uvicorn buffers before it stops reading
    with connect(slow_reader_url) as sock:
        sock.sendall(request_head("POST", "/slow", {"content-length": str(len(body))}) + body)
        r = read_response(sock)
        assert r.status == 200 and r.json() == {"bytes": len(body)}


@pytest.fixture
def just_in_time_reader_url() -> Iterator[str]:
    """An app that asks for the body just before the body timer's third firing (0.5 s apart)."""
    yield from _reader_url("/late", 1.4)


def test_the_body_clock_starts_when_100_continue_is_sent(just_in_time_reader_url: str) -> None:
    """The clock last restarted at 1.0 s (the caller awaited the 100 then) would run out at 1.5 s,
    0.1 s after the 100 goes out: a caller sending its body 0.3 s after the 100 must still be read."""
    with connect(just_in_time_reader_url) as sock:
        sock.sendall(request_head("POST", "/late", {"content-length": "10", "expect": "100-continue"}))
        assert read_response(sock).status == 100
        time.sleep(0.3)  # well within the 0.5 s body timeout, counted from the 100
        sock.sendall(b"0123456789")
        r = read_response(sock)
        assert r.status == 200 and r.json() == {"bytes": 10}


def test_a_caller_awaiting_100_continue_is_not_timed_out(slow_reader_url: str) -> None:
    with connect(slow_reader_url) as sock:
        sock.sendall(request_head("POST", "/slow", {"content-length": "10", "expect": "100-continue"}))
        assert read_response(sock).status == 100  # sent when the app asks for the body
        sock.sendall(b"0123456789")
        r = read_response(sock)
        assert r.status == 200 and r.json() == {"bytes": 10}
