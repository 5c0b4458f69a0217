"""A lean, pipelined client for the two scripts every request runs (admission and settlement).

redis-py spends about 90-135 us of CPU on one EVALSHA (measured on the benchmark machine: its
connection pool, command layers and retry wrapper), which is a quarter of the gateway's budget for
a whole request. This client speaks RESP over a few long-lived connections with hiredis (which
redis-py uses too) and keeps many commands in flight on each one: replies come back in order, so a
FIFO of futures pairs them. Commands queued in the same event-loop turn leave in one write.

It does only EVALSHA (with SCRIPT LOAD when the server does not know a script) on a plain Redis
server; a cluster URL, TLS or a unix socket use redis-py's own scripts (see `scripts_for`). Its
errors are redis-py's, so callers treat "Redis unreachable" the same either way.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.exceptions
from redis.asyncio.connection import parse_url

from gateway.redis.client import CLUSTER_SCHEMES, RedisClient

Arg = str | int | float | bytes


def _encode(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return str(value).encode()
    return repr(value).encode()


def _pack_slowly(parts: tuple[Arg, ...]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = _encode(part)
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


def pack(*parts: Arg) -> bytes:
    """One command in RESP. hiredis's encoder (C) gives the same bytes for str, int, float and
    bytes: the settlement's two dozen arguments took about 2,400 bytecodes a request in Python, an
    eighth of the gateway's. Anything else it refuses (a bool, a bytearray) is encoded as before."""
    try:
        packed: bytes = hiredis.pack_command(cast(Any, parts))  # its stub types a 1-tuple
    except TypeError:
        return _pack_slowly(parts)
    return packed


class _Connection(asyncio.Protocol):
    """One connection with many commands in flight. A watchdog, armed while replies are awaited,
    fails every waiting call with TimeoutError and drops the connection once the oldest has waited
    `timeout_s` (one timer per connection instead of one per call)."""

    def __init__(self, timeout_s: float) -> None:
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(redis.exceptions.ConnectionError(f"connection to Redis lost: {exc!r}"))

    def _fail_all(self, error: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self.close()

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        late = time.monotonic() - self._waiting[0][1]
        if late >= self._timeout_s:
            self._fail_all(redis.exceptions.TimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = asyncio.get_running_loop().call_later(self._timeout_s - late, self._check)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            future, _ = self._waiting.popleft()
            if not future.done():  # a caller that was cancelled leaves its reply here
                future.set_result(reply)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed or self._transport is None:
            raise redis.exceptions.ConnectionError("connection to Redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((future, time.monotonic()))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._check)
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(command)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.write(b"".join(out))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class ScriptClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connections: int = 2,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self._host, self._port, self._db = host, port, db
        self._auth = [a for a in (username, password) if a]
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._slots: list[_Connection | None] = [None] * max(1, connections)
        self._locks = [asyncio.Lock() for _ in self._slots]
        self._turn = 0

    async def evalsha(self, sha: str, source: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        command = pack("EVALSHA", sha, len(keys), *keys, *args)
        reply = await self._call(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self._call(pack("SCRIPT", "LOAD", source))
            reply = await self._call(command)
        if isinstance(reply, hiredis.ReplyError):
            raise redis.exceptions.ResponseError(str(reply))
        return reply

    async def aclose(self) -> None:
        for conn in self._slots:
            if conn is not None:
                conn.close()
        self._slots = [None] * len(self._slots)

    async def _call(self, command: bytes) -> Any:
        conn = await self._connection()
        return await conn.send(command)

    async def _connection(self) -> _Connection:
        self._turn = (self._turn + 1) % len(self._slots)
        slot = self._turn
        conn = self._slots[slot]
        if conn is not None and not conn.closed:
            return conn
        async with self._locks[slot]:
            conn = self._slots[slot]
            if conn is None or conn.closed:
                conn = await self._open()
                self._slots[slot] = conn
            return conn

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(self._timeout_s), self._host, self._port)
                setup = []
                if self._auth:
                    setup.append(conn.send(pack("AUTH", *self._auth)))
                if self._db:
                    setup.append(conn.send(pack("SELECT", self._db)))
                for reply in await asyncio.gather(*setup):
                    if isinstance(reply, hiredis.ReplyError):
                        conn.close()
                        raise redis.exceptions.ConnectionError(f"Redis refused the connection setup: {reply}")
        except TimeoutError:
            raise redis.exceptions.TimeoutError("timed out connecting to Redis") from None
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {exc!r}") from None
        return conn


class Script:
    """Called like redis-py's Script (`await script(keys=[...], args=[...])`), run by ScriptClient."""

    def __init__(self, client: ScriptClient, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        return await self._client.evalsha(self._sha, self._source, keys, args)


def script_client_for(url: str) -> ScriptClient | None:
    """The lean client for a plain redis:// URL; None where redis-py's scripts are used instead."""
    scheme = url.partition("://")[0]
    if scheme != "redis" or scheme in CLUSTER_SCHEMES:
        return None
    parsed = parse_url(url)
    if "path" in parsed or "host" not in parsed:  # a unix socket
        return None
    return ScriptClient(
        str(parsed["host"]),
        int(parsed.get("port", 6379)),
        db=int(parsed.get("db", 0)),
        username=parsed.get("username"),
        password=parsed.get("password"),
    )


def register(redis: RedisClient, fast: ScriptClient | None, source: str) -> Any:
    """A script callable: on the lean client when there is one, else redis-py's."""
    return Script(fast, source) if fast is not None else redis.register_script(source)
