"""The image routes' JSON answer: written by orjson, an image's base64 encoded a piece at a time as
it is sent, its raw headers made directly, and the request settled right after it was sent.

A Response (FastAPI's routes pass it on as it is), whose own __init__ is not used: Starlette's
builds the headers in three passes and its background task checks, per answer, whether the
settlement is a coroutine; on the hot path that was about 600 bytecodes a request of the gateway's
own work.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.server import SEND_HEAD
from gateway.images.encoded import json_parts, parts_length
from gateway.service import Delivery

# What the server's SEND_HEAD writes as it is given, checked here for all the headers at once: a
# name is a lower-case token (RFC 9110), a value has no control character but tab (what uvicorn
# refuses). Headers that fail it take the ordinary path, which lower-cases names and refuses bad
# values as before.
_NAMES = re.compile(r"[a-z0-9!#$%&'*+\-.^_`|~]*")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class JsonBytesResponse(Response):
    """JSON by orjson: a b64_json answer holds megabytes of text, which json.dumps took ~14 ms to
    escape for a 2 MiB image (orjson ~0.5 ms). An image's base64 (Base64Of) is encoded a piece at
    a time as it is sent, each piece after the connection took the one before: the answer never
    holds it whole. `after_send` runs once the answer was handed to the connection (a served
    request's settlement); `delivery` settles it as not delivered if sending failed before that
    (see gateway/api/hot.py)."""

    media_type = "application/json"

    def __init__(
        self,
        content: Any,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        delivery: Delivery | None = None,
        after_send: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._parts = parts = json_parts(content)
        self.status_code = status_code
        self.background = None  # as any Response's: run after it was sent (FastAPI may set it)
        self.delivery = delivery
        self._after_send = after_send
        first = parts[0]
        single = len(parts) == 1 and isinstance(first, bytes)  # no image's base64 in it
        self.body = first if isinstance(first, bytes) and single else b""
        self._length = len(self.body) if single else parts_length(parts)
        self._fields: Mapping[str, str] = headers or {}
        self._added: list[tuple[bytes, bytes]] = []
        self._raw: list[tuple[bytes, bytes]] | None = None
        # Set by the hot path (api/hot.py), whose `send` is the server's own: elsewhere middleware
        # may watch or change the start message, which the server's SEND_HEAD would not pass them.
        self.may_send_head = False

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI has them; made when first asked for, and then what is sent."""
        if self._raw is None:
            names = {k.lower() for k in self._fields}
            fields = [*self._fields.items(), *self._defaults(names).items()]
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in fields]
            raw += self._added
            self._raw = raw
        return self._raw

    @raw_headers.setter
    def raw_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._raw = value

    def add_headers(self, *headers: tuple[bytes, bytes]) -> None:
        """Headers added to the answer's own (x-request-id, nosniff), sent after them."""
        if self._raw is not None:
            self._raw += headers
        else:
            self._added += headers

    def _head(self) -> bytes | None:
        """The header lines for SEND_HEAD, or None when a header needs the ordinary path."""
        fields = self._fields
        if not _NAMES.fullmatch("".join(fields)) or _UNSAFE_VALUE.search("".join(fields.values())):
            return None
        lines = [f"{name}: {value}\r\n" for name, value in fields.items()]
        lines += [f"{name}: {value}\r\n" for name, value in self._defaults(fields).items()]
        head = "".join(lines).encode("latin-1")
        if self._added:
            head += b"".join([name + b": " + value + b"\r\n" for name, value in self._added])
        return head

    def _defaults(self, names: Container[str]) -> dict[str, str]:
        """content-length and content-type, each unless the answer's own headers (`names`, lower
        case) set it."""
        defaults = {}
        if "content-length" not in names:
            defaults["content-length"] = str(self._length)
        if "content-type" not in names:
            defaults["content-type"] = self.media_type
        return defaults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send_head = scope.get("extensions", {}).get(SEND_HEAD) if self.may_send_head and self._raw is None else None
        head = self._head() if send_head is not None else None
        if send_head is not None and head is not None:
            send_head(self.status_code, head, self._length)
        else:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if len(self._parts) == 1:  # as a body without an image's base64 is (json_parts)
            await send({"type": "http.response.body", "body": self.body})
        else:
            await self._send_parts(send)
        if self._after_send is not None:
            await self._after_send()
        if self.background is not None:
            await self.background()

    async def _send_parts(self, send: Send) -> None:
        for part in self._parts:
            if isinstance(part, bytes):
                await send({"type": "http.response.body", "body": part, "more_body": True})
                continue
            for piece in part.pieces():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                # A turn of the event loop: the server hands a turn's writes to the socket at its
                # end (api/server.py), so without one every piece was encoded and buffered before
                # the first was sent, and the connection's flow control (send() waits while the
                # socket's buffer is full) never held a piece back: the whole base64 was held.
                await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
