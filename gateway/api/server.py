"""uvicorn's httptools protocol, with the writes of one event-loop turn sent together.

uvicorn writes a response's status line and headers, then its body, as two transport writes: two
send() system calls per response, and on the benchmark machine a loopback send() costs about as
much as the rest of uvicorn's work on a request. Buffering the writes of one loop turn and sending
them at its end makes that one call. Large bodies are sent as they are, without joining them to
the headers (no copy of an image's bytes).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

JOIN_UP_TO = 64 * 1024


class _CoalescingTransport:
    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data) if not isinstance(data, bytes) else data)
        self._size += len(data)

    def _flush(self) -> None:
        pending, size = self._pending, self._size
        self._pending, self._size = [], 0
        if not pending or self._transport.is_closing():
            return
        if len(pending) == 1 or size > JOIN_UP_TO:
            for part in pending:
                self._transport.write(part)
        else:
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# A scope extension: a callable telling whether the caller's connection is still open, so a
# served request is charged only if its answer was handed to a live connection (ASGI itself drops
# a response to a caller that left without a word).
CONNECTION_OPEN = "gateway.connection_open"


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[CONNECTION_OPEN] = lambda: not cycle.disconnected
