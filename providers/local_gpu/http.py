"""A lean HTTP/1.1 client for the GPU workers: keep-alive connections per worker, one exchange at a
time on each, responses parsed by httptools (the parser uvicorn uses).

Every owned-GPU image is one POST through here, so its cost is on the gateway's hot path. aiohttp
spent about 200 us of CPU on that exchange on the benchmark machine, this about a quarter of it.
It does only what the worker protocol needs: a request with a body of known length, a response
with Content-Length or chunked encoding, no redirects, cookies, proxies, compression or TLS.

Failures come out as three exceptions the adapter maps to provider errors: the connection could
not be made (the job never reached the worker), the worker went silent (timeout), or the exchange
broke once the request was sent. A cancelled exchange closes its connection, which tells the worker
to drop the job.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# A body at least this long that declares its length is read into one buffer made for it, each
# piece copied in as it arrives: kept as a list of pieces and joined, a 2 MiB image was held twice
# over while the join ran, and a request in flight held 2x its image. A length past
# PREALLOCATE_UP_TO is read as pieces: memory is taken as the bytes come, not on a header's word.
PREALLOCATE_FROM = 64 * 1024
PREALLOCATE_UP_TO = 256 * 1024 * 1024


class ConnectFailed(Exception):
    """No connection could be made: the request never left."""


class ExchangeTimeout(Exception):
    """The worker did not answer within the time given."""


class ExchangeBroken(Exception):
    """The connection broke before the whole answer came back."""

    def __init__(self, message: str, *, reused: bool) -> None:
        super().__init__(message)
        self.reused = reused  # on a pooled connection: the worker may have closed it while idle


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes | bytearray  # a bytearray when it was read into a buffer of its declared length


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._buffer: bytearray | None = None  # the body, when its length was declared and large
        self._filled = 0
        self._done: asyncio.Future[Reply] | None = None
        self.reusable = False
        self.closed = False
        # A 200's body handed over chunk by chunk as it arrives (a streaming answer), not kept.
        self.on_chunk: Callable[[bytes], None] | None = None

    # --- asyncio ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionResetError(f"connection closed: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._done is not None and not self._done.done():
                self._done.set_exception(ConnectionResetError(f"unparsable response: {exc}"))
            self.close()

    # --- httptools ----------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        streamed = self.on_chunk is not None and self._parser.get_status_code() == 200
        declared = self._headers.get("content-length", "")
        framed = "transfer-encoding" not in self._headers  # a chunked body's length is the chunks'
        if not streamed and framed and declared.isdigit() and PREALLOCATE_FROM <= int(declared) <= PREALLOCATE_UP_TO:
            self._buffer = bytearray(int(declared))
            self._filled = 0

    def on_body(self, body: bytes) -> None:
        if self._buffer is not None:
            # httptools hands over no more than the declared length: the rest is the next answer
            end = self._filled + len(body)
            self._buffer[self._filled : end] = body
            self._filled = end
        elif self.on_chunk is not None and self._parser.get_status_code() == 200:
            self.on_chunk(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        self.reusable = self._parser.should_keep_alive()
        body: bytes | bytearray = b"".join(self._chunks) if self._buffer is None else self._buffer
        short = self._buffer is not None and self._filled != len(self._buffer)
        reply = Reply(status, self._headers, body)
        self._headers, self._chunks, self._buffer = {}, [], None
        if self._done is not None and not self._done.done():
            if short:  # never a body padded with the buffer's zeros
                self.reusable = False
                self._done.set_exception(ConnectionResetError("the body is shorter than its content-length"))
            else:
                self._done.set_result(reply)

    # --- use ----------------------------------------------------------------------------------
    def exchange(self, request: bytes) -> asyncio.Future[Reply]:
        assert self._transport is not None
        self.reusable = False
        self._done = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._done

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class WorkerHttp:
    def __init__(self, *, connect_timeout_s: float, max_idle_per_host: int = 256, idle_s: float = 3.0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle_per_host
        # An idle connection is let go before a worker's own keep-alive timeout (uvicorn: 5 s) could
        # close it under a request.
        self._idle_s = idle_s
        self._idle: dict[tuple[str, int], collections.deque[tuple[float, _Conn]]] = {}
        # Each URL's (host, port, path and query), parsed once: the workers' few URLs come back on
        # every request, and urlsplit's host and port are parsed anew on each access.
        self._targets: dict[str, tuple[str, int, str]] = {}

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> Reply:
        """One exchange. timeout_s=None: no timer of its own (the caller bounds it, and cancelling
        the call closes the connection). `on_chunk`: a 200's body goes there as it arrives (the
        Reply's body is then empty); any other status's body is kept as usual."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(url)
        host, port, path = target
        head = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        conn, reused = await self._take(host, port)
        conn.on_chunk = on_chunk
        try:
            if timeout_s is None:
                reply = await conn.exchange(request)
            else:
                async with asyncio.timeout(timeout_s):
                    reply = await conn.exchange(request)
        except TimeoutError:
            conn.close()
            raise ExchangeTimeout(f"no answer from {host}:{port} within {timeout_s} s") from None
        except ConnectionResetError as exc:
            conn.close()
            raise ExchangeBroken(str(exc), reused=reused) from None
        except BaseException:
            conn.close()  # cancelled: closing tells the worker to drop the job
            raise
        finally:
            conn.on_chunk = None
        if conn.reusable and not conn.closed:
            self._give_back(host, port, conn)
        else:
            conn.close()
        return reply

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for _, conn in pool:
                conn.close()
        self._idle.clear()

    async def _take(self, host: str, port: int) -> tuple[_Conn, bool]:
        pool = self._idle.get((host, port))
        while pool:
            since, conn = pool.pop()
            if not conn.closed and time.monotonic() - since < self._idle_s:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(_Conn, host, port)
        except TimeoutError:
            raise ConnectFailed(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc!r}") from None
        return conn, False

    def _give_back(self, host: str, port: int, conn: _Conn) -> None:
        pool = self._idle.setdefault((host, port), collections.deque())
        now = time.monotonic()
        # The newest is taken first, so after a burst the oldest would sit idle for good, each an
        # open file: close those past idle_s as new ones come back.
        while pool and (pool[0][1].closed or now - pool[0][0] >= self._idle_s):
            pool.popleft()[1].close()
        if len(pool) >= self._max_idle:
            conn.close()
        else:
            pool.append((now, conn))


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    path = f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}"
    return parts.hostname or "127.0.0.1", parts.port or 80, path
