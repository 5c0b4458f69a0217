"""HTTP/1.1 replies of the fake upstream as byte parts (written with writelines, never joined, so a
2 MiB base64 image is not copied per request)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Sequence[bytes]
    content_type: str = "application/json"
    headers: Headers = field(default=())

    def head(self, *, keep_alive: bool) -> bytes:
        length = sum(len(p) for p in self.body)
        lines = [
            f"HTTP/1.1 {self.status} {_reason(self.status)}",
            f"content-type: {self.content_type}",
            f"content-length: {length}",
            "connection: keep-alive" if keep_alive else "connection: close",
        ]
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_reply(status: int, body: object, headers: Headers = ()) -> Reply:
    return Reply(status, (json.dumps(body, separators=(",", ":")).encode(),), headers=headers)


def openai_error(status: int, message: str, param: str | None = None) -> Reply:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return json_reply(status, {"error": error})


def stream_head(status: int, content_type: str, headers: Headers = ()) -> bytes:
    """The head of a chunked response (SSE); the body follows as chunk() parts."""
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}",
        f"content-type: {content_type}",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
    ]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; chunk(b"") is the terminating one."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
