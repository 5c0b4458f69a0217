"""The served answer's head written at once (the server's SEND_HEAD): the same bytes uvicorn's
send() writes for the same answer, and nothing it would refuse written at all."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.api.json_response import JsonBytesResponse
from gateway.api.server import SEND_HEAD, HttpLimits, http_protocol
from tests.fakes.server import serve_in_thread
from tests.raw_http import closed_by_server, connect, request_head

HEADERS = {
    "x-gateway-provider": "local_gpu",
    "x-ratelimit-reset-requests": "59.9s",
    "x-gateway-ignored-params": "style, quality\t(tab allowed)",
}
LIMITS = HttpLimits(
    max_header_bytes=64 * 1024, max_header_fields=100, header_timeout_s=5, body_timeout_s=5, body_min_rate=0
)


def _app(seen: list[bool]) -> Starlette:
    async def answer(request: Request) -> Response:
        headers = dict(HEADERS)
        if request.query_params.get("evil"):
            headers["x-echo"] = request.query_params["evil"]
        if request.query_params.get("upper"):
            headers["X-Mixed-Case"] = "yes"
        extensions = request.scope.setdefault("extensions", {})
        seen.append(SEND_HEAD in extensions)
        if request.query_params.get("ordinary"):
            extensions.pop(SEND_HEAD, None)  # what uvicorn's send() writes for the same answer
        response = JsonBytesResponse({"created": 1, "data": [{"url": "u"}]}, status_code=202, headers=headers)
        response.add_headers((b"x-request-id", b"req_1"), (b"x-content-type-options", b"nosniff"))
        response.may_send_head = not request.query_params.get("routed")
        return response

    async def through_middleware(scope: Scope, receive: Receive, send: Send) -> None:
        """As the gateway's FastAPI routes are served: a layer adding a header to the start message."""

        async def add_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-added-by-middleware", b"1")]
            await send(message)

        await app(scope, receive, add_header)

    app = Starlette(routes=[Route("/answer", answer, methods=["POST"])])
    return through_middleware  # type: ignore[return-value]


@pytest.fixture
def served() -> Iterator[tuple[str, list[bool]]]:
    seen: list[bool] = []
    with serve_in_thread(_app(seen), http=http_protocol(LIMITS)) as url:
        yield url, seen


def _exchange(sock: socket.socket, path: str, headers: dict[str, str] | None = None) -> tuple[list[str], bytes]:
    """One answer's header lines (without the date, which moves each second) and its body."""
    sock.sendall(request_head("POST", path, {"content-length": "0", **(headers or {})}))
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.decode("latin-1").split("\r\n") if not line.startswith("date:")]
    length = next((int(v) for k, _, v in (x.partition(": ") for x in lines) if k == "content-length"), 0)
    while len(body) < length:
        body += sock.recv(length - len(body))
    return lines, body


def test_the_head_is_what_uvicorn_writes_for_the_same_answer(served: tuple[str, list[bool]]) -> None:
    url, seen = served
    with connect(url) as sock:
        fast = _exchange(sock, "/answer")
        ordinary = _exchange(sock, "/answer?ordinary=1")  # the same keep-alive connection
        again = _exchange(sock, "/answer")
    assert seen == [True, True, True]
    # the server's extension skips the middleware's layer: only the hot path, which has none, uses it
    assert fast[0] == [line for line in ordinary[0] if line != "x-added-by-middleware: 1"] == again[0]
    assert fast[1] == ordinary[1] == again[1]
    assert "x-added-by-middleware: 1" in ordinary[0] and "x-added-by-middleware: 1" not in fast[0]
    lines, body = fast
    assert lines[0] == "HTTP/1.1 202 Accepted"
    assert "x-gateway-ignored-params: style, quality\t(tab allowed)" in lines
    assert lines[-2:] == ["x-request-id: req_1", "x-content-type-options: nosniff"]
    assert f"content-length: {len(body)}" in lines and "content-type: application/json" in lines
    assert body == b'{"created":1,"data":[{"url":"u"}]}'


def test_the_request_is_in_the_access_log_as_uvicorn_logs_it(
    served: tuple[str, list[bool]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = served
    with caplog.at_level(logging.INFO, logger="uvicorn.access"), connect(url) as sock:
        _exchange(sock, "/answer?x=1")
        _exchange(sock, "/answer?ordinary=1")
    logged = [r.getMessage().split(" - ", 1)[1] for r in caplog.records if r.name == "uvicorn.access"]
    assert logged == ['"POST /answer?x=1 HTTP/1.1" 202', '"POST /answer?ordinary=1 HTTP/1.1" 202']


def test_an_answer_sent_through_middleware_keeps_what_it_adds(served: tuple[str, list[bool]]) -> None:
    url, _ = served
    with connect(url) as sock:
        lines, _ = _exchange(sock, "/answer?routed=1")
    assert "x-added-by-middleware: 1" in lines and "x-request-id: req_1" in lines


def test_a_header_value_with_a_line_break_is_never_written(served: tuple[str, list[bool]]) -> None:
    url, _ = served
    with connect(url) as sock:
        lines, _ = _exchange(sock, "/answer?evil=a%0D%0Ax-injected:%201")
    assert not lines[0].startswith("HTTP/1.1 2")  # refused as uvicorn's send() refuses it (the connection closed)
    assert not any(line.startswith("x-injected") for line in lines)


def test_a_name_not_in_lower_case_takes_the_ordinary_path(served: tuple[str, list[bool]]) -> None:
    url, _ = served
    with connect(url) as sock:
        lines, _ = _exchange(sock, "/answer?upper=1")
    assert "x-mixed-case: yes" in lines


def test_a_caller_closing_the_connection_gets_connection_close(served: tuple[str, list[bool]]) -> None:
    url, _ = served
    with connect(url) as sock:
        lines, _ = _exchange(sock, "/answer", {"connection": "close"})
        assert "connection: close" in lines
        assert closed_by_server(sock)


def test_without_the_extension_the_answer_is_sent_as_before() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    import asyncio

    response = JsonBytesResponse({"a": 1}, headers={"x-one": "1"})
    response.add_headers((b"x-request-id", b"req_2"))
    asyncio.run(response({"type": "http", "extensions": {}}, receive, send))
    assert sent[0]["headers"] == [
        (b"x-one", b"1"),
        (b"content-length", b"7"),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req_2"),
    ]
    assert sent[1]["body"] == b'{"a":1}'


def test_a_finished_request_is_freed_without_the_cycle_collector(served: tuple[str, list[bool]]) -> None:
    """The server's extensions hold the request's cycle weakly: a strong reference from the scope,
    which the cycle holds, made every request a reference cycle only the collector freed."""
    url, _ = served
    gc.collect()
    gc.disable()  # what only the collector would free stays where gc.get_objects() sees it
    try:
        with connect(url) as sock:
            for _ in range(20):
                _exchange(sock, "/answer")
            alive = sum(type(o) is RequestResponseCycle for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive <= 2  # the connection's last request (and the server thread's current one)
