"""HTTP/1.1 spoken by hand over a socket, for what no HTTP client sends: stalled, trickled, oversized
or malformed requests, and the answers a server gives them."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(base_url: str, timeout_s: float = 30.0) -> socket.socket:
    """A connection to the server; `timeout_s` only keeps a broken test from hanging."""
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> RawResponse:
    """One answer: its head and its content-length body, and not a byte more (pipelined answers
    follow it on the socket)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"the server closed the connection without an answer (got {head!r})")
        head += byte
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError(f"the server closed the connection within the body (got {body!r})")
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body)


def closed_by_server(sock: socket.socket) -> bool:
    """Wait for the server to close the connection (True), or to send more bytes (False)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def is_open_and_unanswered(sock: socket.socket) -> bool:
    """The server has neither answered nor closed this connection (as far as has arrived)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False
