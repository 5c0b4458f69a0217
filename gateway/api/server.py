"""uvicorn's httptools protocol, with the writes of one event-loop turn sent together, and limits on
what a caller may send before the app sees its request.

Writes: uvicorn writes a response's status line and headers, then its body, as two transport
writes: two send() system calls per response, and on the benchmark machine a loopback send() costs
about as much as the rest of uvicorn's work on a request. Buffering the writes of one loop turn and
sending them at its end makes that one call. Large bodies are sent as they are, without joining
them to the headers (no copy of an image's bytes).

Limits (HttpLimits, from Settings): the request line and headers are counted as bytes arrive,
before the parser sees them (httptools joins a header's pieces itself, so a 64 MiB header would be
held whole before any callback saw it), and refused with 431 past a size or a field count; a
request's headers and then its body must arrive in time (408). These errors, and uvicorn's own
400 for bytes that are not HTTP, are answered in OpenAI's shape, then the connection is closed.
"""

from __future__ import annotations

import asyncio
import weakref
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from gateway.errors import GatewayError, HeaderFieldsTooLargeError, InvalidRequestError, RequestTimeoutError
from gateway.ids import RandomIds, request_id
from gateway.settings import Settings

CycleRef = weakref.ref[RequestResponseCycle]

JOIN_UP_TO = 64 * 1024

# After an error answer the connection is half-closed and what the caller still sends is read and
# dropped, for up to this long and this much, before it is closed: closing a socket with unread
# bytes resets the connection, and a caller still sending its request would lose the answer.
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024


class _CoalescingTransport:
    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        # A large buffer is kept as given, not copied (an image read for its URL is 2 MiB): whoever
        # writes one hands it over and leaves it unchanged, as a transport that cannot send it at once
        # may keep it unsent. A small one is copied: it is joined with the turn's other writes anyway.
        if not isinstance(data, bytes) and len(data) <= JOIN_UP_TO:
            data = bytes(data)
        self._pending.append(data)
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

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int  # the request line and headers together
    max_header_fields: int
    header_timeout_s: float  # from the connection's start, or the request's first byte
    body_timeout_s: float  # the longest pause between reads of a body, and the rate's grace
    body_min_rate: float  # bytes a second; 0: none

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_fields=settings.max_header_fields,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            body_min_rate=settings.body_min_rate_bytes_s,
        )


def http_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """What uvicorn's `http` option takes: the gateway's protocol with these limits. uvicorn only
    calls it, as it would a class; a partial pickles, so its worker processes receive it too."""
    return cast("type[asyncio.Protocol]", partial(GatewayHttpProtocol, limits=limits))


# A scope extension: a callable telling whether the caller's connection is still open, so a
# served request is charged only if its answer was handed to a live connection (ASGI itself drops
# a response to a caller that left without a word).
CONNECTION_OPEN = "gateway.connection_open"


# A scope extension: `watch(callback)` runs `callback` once if the caller's connection is lost (or
# the request refused) before its answer is complete, and returns a function that ends the watch.
# It tells until_disconnect (api/disconnect.py) what a task waiting on receive() told it otherwise:
# a task, a future and a cancellation a request.
ON_DISCONNECT = "gateway.on_disconnect"


# A scope extension: `send_head(status, head, length)` writes a response's status line and headers
# in one go, where `head` is its header lines ("name: value\r\n" each, lower-case names) checked
# already by whoever made them, and `length` the body's length; the body then goes through send()
# as usual. uvicorn's send() runs two regular expressions, a lower() and a join per header: a
# served image's answer has 16 of them (limits, cost, route). It logs the request as send() does
# where uvicorn's access log is on.
SEND_HEAD = "gateway.send_head"


class _RefusedError(Exception):
    """Raised in a parser callback to stop parsing; the protocol's `_refusal` says why."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """Per connection, one phase at a time: reading a request's head (from the connection's start,
    and again after each request's last byte), then its body, until its last byte. A phase gets a
    deadline only when it does not end within the bytes at hand (a request that arrives in one
    read gets none), and one timer serves them all: it is not cancelled when a phase ends but
    looks, when it fires, at the phase then under way (none: it lapses; a later deadline: it is
    set again), so a keep-alive connection costs no timer operation per request."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._reading_head = True
        self._head_bytes = 0  # of the head being read, as counted from reads
        self._head_due: float | None = None  # when the head being read must be in
        self._in_body = False
        self._body_started: float | None = None  # when the body's clock started; None: not running
        self._body_last = 0.0  # when body bytes last came
        self._body_bytes = 0  # since the body's clock started
        self._awaiting_continue = False  # when the body's clock last started, the caller awaited "100 Continue"
        self._completed = 0  # requests whose last byte has been parsed
        self._timer: TimerHandle | None = None
        self._timer_when = 0.0
        self._refusal: GatewayError | None = None
        self._lingering = -1  # bytes dropped since an error answer; -1: not lingering
        self._watched: dict[RequestResponseCycle, Callable[[], None]] = {}  # see ON_DISCONNECT
        # uvicorn's default headers (date, server: a new list each second) and their lines, for SEND_HEAD
        self._defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        # The first request's headers are due from the connection's start, however its bytes
        # come (or none do).
        self._head_due = self.loop.time() + self._limits.header_timeout_s
        self._wake_at(self._head_due)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        self._tell_gone()

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        chunk: bytes | memoryview = data
        limit = self._limits.max_header_bytes
        # Past the cap, feed the head only up to it: if the parser has not finished the head
        # there, it is too large. Bytes after a request ends within a read are not counted
        # against the next head (the parser does not say where it ended): the slack is one read.
        while self._reading_head and len(chunk) > limit - self._head_bytes:
            room = limit - self._head_bytes
            view = memoryview(chunk)
            completed = self._completed
            self._head_bytes = limit
            if not self._feed(view[:room]):
                return
            if self._reading_head and self._completed == completed:
                self._refuse(HeaderFieldsTooLargeError(f"The request line and headers are larger than {limit} bytes."))
                return
            chunk = view[room:]
        if self._reading_head:
            self._head_bytes += len(chunk)
        elif self._in_body:
            self._body_bytes += len(chunk)
            self._body_last = self.loop.time()
        if not self._feed(chunk):
            return
        if self._reading_head:
            if self._head_bytes and self._head_due is None:  # a head begun and not finished in this read
                self._head_due = self.loop.time() + self._limits.header_timeout_s
                self._wake_at(self._head_due)
        elif self._in_body and self._body_started is None:  # a body begun (or awaited), not finished
            self._start_body_clock()

    def _feed(self, data: bytes | memoryview) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reading_head = self._in_body = False  # the connection is the WebSocket protocol's now
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError as exc:
            refusal, self._refusal = self._refusal, None
            self._refuse(
                refusal
                or InvalidRequestError(f"The request is not valid HTTP/1.1: {exc}.", code="malformed_http_request")
            )
            return False
        return True

    def on_headers_complete(self) -> None:
        if len(self.headers) > self._limits.max_header_fields:
            self._refusal = HeaderFieldsTooLargeError(
                f"The request has more than {self._limits.max_header_fields} header fields."
            )
            raise _RefusedError
        self._reading_head, self._head_bytes, self._head_due = False, 0, None
        self._in_body, self._body_started = True, None
        super().on_headers_complete()
        if self.cycle is not None:
            # The request's cycle by a weak reference: the scope is the cycle's, and a strong one
            # from its extensions made every request a reference cycle, left for the collector
            # (about 20 objects a request; its young collections then ran every ~19 requests).
            # The app's task holds the cycle (its receive and send) as long as these are called.
            cycle = weakref.ref(self.cycle)
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[CONNECTION_OPEN] = partial(_is_open, cycle)
            extensions[ON_DISCONNECT] = partial(self._watch, cycle)
            extensions[SEND_HEAD] = partial(self._send_head, cycle)

    def on_message_complete(self) -> None:
        self._reading_head, self._head_bytes = True, 0
        self._in_body, self._body_started = False, None
        self._completed += 1
        super().on_message_complete()

    def _send_head(self, ref: CycleRef, status: int, head: bytes, length: int) -> None:
        """What uvicorn's send() does with a response's start for a body of known length."""
        cycle = ref()
        if cycle is None or cycle.disconnected:  # as send() drops an answer to a caller gone
            return
        if cycle.response_started:
            raise RuntimeError("The response has started already.")
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        if cycle.access_log:
            scope = cycle.scope
            cycle.access_logger.info(
                '%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                get_path_with_query_string(scope), scope["http_version"], status,
            )  # fmt: skip
        cycle.expected_content_length = length
        cycle.chunked_encoding = False
        defaults = cycle.default_headers
        if self._defaults[0] is not defaults:
            self._defaults = (defaults, b"".join([name.lower() + b": " + value + b"\r\n" for name, value in defaults]))
        close = b"" if cycle.keep_alive else b"connection: close\r\n"
        self.transport.write(b"".join((STATUS_LINE[status], self._defaults[1], head, close, b"\r\n")))

    # --- callers gone ---------------------------------------------------------------------

    def _watch(self, ref: CycleRef, callback: Callable[[], None]) -> Callable[[], None]:
        cycle = ref()
        if cycle is None or cycle.disconnected:
            self.loop.call_soon(callback)
            return _not_watching
        self._watched[cycle] = callback
        # As receive() does: a connection paused for flow control would not notice its close.
        self.flow.resume_reading()
        return partial(self._unwatch, cycle)

    def _unwatch(self, cycle: RequestResponseCycle) -> None:
        self._watched.pop(cycle, None)

    def _tell_gone(self) -> None:
        for cycle, callback in list(self._watched.items()):
            if cycle.disconnected:
                del self._watched[cycle]
                callback()

    # --- deadlines -------------------------------------------------------------------------

    def _wake_at(self, when: float) -> None:
        """Have the timer fire by `when` (one that fires sooner will look again then)."""
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._deadline)

    def _start_body_clock(self) -> None:
        self._body_started = self._body_last = self.loop.time()
        self._body_bytes = 0
        cycle = self.cycle
        self._awaiting_continue = cycle is not None and cycle.waiting_for_100_continue
        self._wake_at(self._body_started + self._limits.body_timeout_s)

    def _body_due(self, started: float) -> float:
        limits = self._limits
        due = self._body_last + limits.body_timeout_s
        if limits.body_min_rate > 0:
            due = min(due, started + limits.body_timeout_s + self._body_bytes / limits.body_min_rate)
        return due

    def _deadline(self) -> None:
        self._timer = None
        now = self.loop.time()
        cycle = self.cycle
        waiting_on_us = self.flow.read_paused or (  # the app has not taken what came
            cycle is not None
            and not cycle.response_complete
            # an earlier pipelined request is still being answered, or the caller awaits "100 Continue"
            and (self._reading_head or cycle.waiting_for_100_continue)
        )
        if self._in_body and self._body_started is not None:
            # A "100 Continue" sent since the clock last started: the caller starts sending only now
            # (the app asked for the body just before this timer fired, or the clock would have
            # run from a moment when the caller could not send yet).
            continue_sent = self._awaiting_continue and not (cycle is not None and cycle.waiting_for_100_continue)
            if waiting_on_us or continue_sent:
                self._start_body_clock()
                return
            due = self._body_due(self._body_started)
            if now < due:
                self._wake_at(due)
            else:
                self._refuse(RequestTimeoutError("The request body was not received in time."))
        elif self._reading_head and self._head_due is not None:
            if waiting_on_us:
                self._head_due = now + self._limits.header_timeout_s
                self._wake_at(self._head_due)
            elif now < self._head_due:
                self._wake_at(self._head_due)
            elif self._head_bytes:
                self._refuse(RequestTimeoutError("The request line and headers were not received in time."))
            else:
                self.transport.close()  # not a byte asked: closed as an idle keep-alive connection is

    # --- refusals --------------------------------------------------------------------------

    def _refuse(self, error: GatewayError) -> None:
        """Answer `error` and close; only close if an answer to this request has begun already."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reading_head = self._reading_head
        self._reading_head = self._in_body = False
        cycle = self.cycle
        # While a head is read, `cycle` is the previous request's (done with, unless pipelined).
        answered = cycle is not None and cycle.response_started and not (reading_head and cycle.response_complete)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now says http.disconnect; its sends are dropped
            cycle.message_event.set()
            self._tell_gone()
        if answered or self.transport.is_closing():
            self.transport.close()
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        self.logger.warning("%s - refused a request: %d %s", client, error.status_code, error.message)
        self.transport.write(_error_response(error, self.server_state.default_headers))
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = 0
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


def _not_watching() -> None:
    pass


def _is_open(ref: CycleRef) -> bool:
    cycle = ref()
    return cycle is not None and not cycle.disconnected


def _error_response(error: GatewayError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = orjson.dumps(error.body())
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"x-request-id", request_id(RandomIds(block=16)).encode()),
        *((name.encode(), value.encode()) for name, value in error.headers.items()),
    ]
    return b"".join([STATUS_LINE[error.status_code], *(n + b": " + v + b"\r\n" for n, v in headers), b"\r\n", body])
