"""A lean HTTP/1.1 client for the held, bytes and saturation scenarios: raw asyncio streams, one
connection per concurrent caller (reused for that caller's next request), no pool. With thousands
of callers in one process, httpx's pool does work linear in its connections on every request
(httpcore 1.0 checks every idle connection's socket, encode/httpcore#1035), and the bench must
cost little beside what it measures on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class ClientError(Exception):
    """The connection failed or the answer was not HTTP/1.1 as expected."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    started: float  # time.monotonic() when the request began (connecting, if it had to)
    sent: float  # ... when its last byte was handed to the kernel
    finished: float  # ... when the answer's last byte arrived

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def json(self) -> object:
        return json.loads(self.body)


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (inherited by every process started after); the new
    soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def encode_request(method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> tuple[str, int, bytes]:
    """(host, port, the request's head) for a plain-http URL; the body is sent after the head."""
    split = urlsplit(url)
    if split.scheme != "http" or split.hostname is None:
        raise ValueError(f"only http:// URLs: {url}")
    port = split.port or 80
    target = split.path + (f"?{split.query}" if split.query else "")
    lines = [f"{method} {target or '/'} HTTP/1.1", f"Host: {split.hostname}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return split.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Connection:
    """One keep-alive connection, one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes = b"", *, timeout_s: float | None = None) -> Answer:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                if self._writer is None or self._writer.is_closing():
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
                reader, writer = self._reader, self._writer
                assert reader is not None
                writer.write(head)
                if body:
                    writer.write(body)
                await writer.drain()
                sent = time.monotonic()
                status, headers = await _read_head(reader)
                payload = await _read_body(reader, headers)
        except TimeoutError:
            self.close()
            raise
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise ClientError(f"{type(exc).__name__}: {exc}") from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, headers, payload, started, sent, time.monotonic())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    first, *lines = raw[:-4].decode("latin-1").split("\r\n")
    version, _, rest = first.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x answer: {first[:60]!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(rest[:3]), headers


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return b""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values by nearest rank; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def error_code(answer: Answer) -> str:
    """The OpenAI-shaped error's code (or type) and the start of its message, else "-"."""
    try:
        error = json.loads(answer.body).get("error", {})
        return f"{error.get('code') or error.get('type')}: {str(error.get('message'))[:60]}"
    except (ValueError, AttributeError):
        return "-"


def run_async(main: Callable[[], Awaitable[float]]) -> float:
    """Run a scenario's client on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_call(main))
    return uvloop.run(_call(main))


async def _call(main: Callable[[], Awaitable[float]]) -> float:
    return await main()
