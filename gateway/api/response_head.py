"""A response's status line and headers, written for uvicorn's request cycle with one check of all
its names and one of all its values.

uvicorn checks each header on its own (two regular-expression searches, a lower-casing and three
comparisons a header): an image answer has about twenty headers (the rate-limit and x-gateway-*
ones), and that loop was the largest single piece of the server's own work on it, about 700
bytecodes. The same checks hold for a whole block at once: each expression matches one character,
so it finds one in the joined names (or values) exactly when it finds one in some name (or value).
An answer that needs more of uvicorn (no content-length, a connection or transfer-encoding header,
a name sent twice or not in lower case, anything refused) goes through uvicorn's own send, as do
the bodies.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Message, Send
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)


def lean_send(cycle: RequestResponseCycle) -> Send:
    """`cycle.send`, writing a plain answer's head in one pass."""
    full = cycle.send

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start" and not cycle.response_started and _wrote_head(cycle, message):
            return
        await full(message)  # type: ignore[arg-type]

    return send


def _wrote_head(cycle: RequestResponseCycle, message: Message) -> bool:
    """Write the head as uvicorn's send would, and say so; False (nothing done) when it needs more
    than a plain answer of a known length on a connection kept open."""
    if cycle.flow.write_paused or cycle.disconnected or cycle.access_log or not cycle.keep_alive:
        return False
    if cycle.chunked_encoding is not None or cycle.scope["method"] == "HEAD":
        return False
    try:
        headers: list[Any] = [*cycle.default_headers, *message.get("headers", ())]
        fields: dict[bytes, bytes] = dict(headers)
        names = b"".join(fields)
        values = b"".join(fields.values())
    except (TypeError, ValueError):  # not pairs of bytes: uvicorn's send says what is wrong
        return False
    length = fields.get(b"content-length")
    if (
        length is None
        or not length.isdigit()
        or len(fields) != len(headers)
        or b"connection" in fields
        or b"transfer-encoding" in fields
        or names != names.lower()
        or HEADER_RE.search(names)
        or HEADER_VALUE_RE.search(values)
    ):
        return False
    status_line = STATUS_LINE[message["status"]]
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.expected_content_length = int(length)
    cycle.chunked_encoding = False
    cycle.transport.write(b"".join([status_line, *[n + b": " + v + b"\r\n" for n, v in fields.items()], b"\r\n"]))
    return True
