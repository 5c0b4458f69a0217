"""A fast fake upstream for the performance benchmark: one process, one port, both protocols the
gateway's adapters speak (the GPU worker's and fal.ai's queue API), plus /img/ for image URLs and
/_stats counters. A raw asyncio Protocol with the httptools parser (uvloop when present), no
framework: it must cost next to nothing beside the gateway it feeds.

  python -m bench.perf.upstream --port P [--delay-ms D] [--fal-delay-ms F] [--image-bytes B]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, urlsplit

import httptools

from bench.perf.fal_queue import FalJob, FalQueue
from bench.perf.pngs import PngCache, parse_size
from bench.perf.replies import Reply, chunk, json_reply, stream_head
from bench.perf.worker_api import RAW_IMAGES, SIZES, WorkerApi

STAT_KINDS = ("generations", "ready", "health", "models", "img", "fal_submit", "fal_status", "fal_stream",
              "fal_result", "fal_cancel", "other")  # fmt: skip


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    delay_s: float = 0.0  # a worker generation answers this long after it arrived
    fal_delay_s: float = 0.0  # a fal job is COMPLETED this long after its submit
    image_bytes: int = 0  # pad every PNG to about this many bytes (0: as small as it gets, ~3 KB)
    model: str = "hidream-i1-full"  # what the worker's /ready says it serves
    default_format: str = "url"  # response_format when a request names none (OpenAI's default)
    max_queue: int = 1_000_000  # reported in /ready; large, so the adapter never sees saturation


class Upstream:
    """The state all connections share: the worker and fal handlers and the counters."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        sizes = tuple(s for s in (parse_size(t) for t in SIZES) if s is not None)
        self.pngs = PngCache(config.image_bytes, sizes)
        self.worker = WorkerApi(
            model=config.model, delay_s=config.delay_s, pngs=self.pngs,
            default_format=config.default_format, max_queue=config.max_queue,
        )  # fmt: skip
        self.fal = FalQueue(config.fal_delay_s, self.pngs)
        self.stats: Counter[str] = Counter({k: 0 for k in STAT_KINDS})
        self.connections: set[UpstreamProtocol] = set()

    def close_connections(self) -> None:
        """Server.close() leaves open keep-alive connections alone before Python 3.12."""
        for conn in list(self.connections):
            conn.close()

    def stats_reply(self) -> Reply:
        return json_reply(200, dict(self.stats))


@dataclass(slots=True)
class _Slot:
    """One response on a connection; responses leave in request order (pipelining)."""

    parts: list[bytes]
    finished: bool = False


class _Request:
    __slots__ = ("url", "body", "authorization", "host", "request_id", "accept")

    def __init__(self) -> None:
        self.url = b""
        self.body: list[bytes] = []
        self.authorization = ""
        self.host = ""
        self.request_id: str | None = None
        self.accept = ""


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self._up = upstream
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request = _Request()
        self._slots: deque[_Slot] = deque()
        self._close_after: _Slot | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._up.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._up.connections.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self._transport is not None:
                self._transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                self._transport.close()

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = _Request()

    def on_url(self, url: bytes) -> None:
        self._request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"authorization":
            self._request.authorization = value.decode("latin-1")
        elif lowered == b"host":
            self._request.host = value.decode("latin-1")
        elif lowered == b"x-request-id":
            self._request.request_id = value.decode("latin-1")
        elif lowered == b"accept":
            self._request.accept = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._request.body.append(body)

    def on_message_complete(self) -> None:
        slot = _Slot([])
        self._slots.append(slot)
        if not self._parser.should_keep_alive():
            self._close_after = slot
        method = self._parser.get_method().decode("ascii")
        _dispatch(self._up, self, slot, method, self._request)

    # --- writing --------------------------------------------------------------------------------

    def respond(self, slot: _Slot, reply: Reply) -> None:
        slot.parts = [reply.head(keep_alive=slot is not self._close_after), *reply.body]
        slot.finished = True
        self._flush()

    def send_parts(self, slot: _Slot, parts: list[bytes], *, finished: bool) -> None:
        slot.parts.extend(parts)
        slot.finished = finished
        self._flush()

    def later(self, delay_s: float, fn: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(delay_s, fn)

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def _flush(self) -> None:
        transport = self._transport
        while self._slots:
            slot = self._slots[0]
            if slot.parts and transport is not None:
                transport.writelines(slot.parts)
            slot.parts = []
            if not slot.finished:
                return
            self._slots.popleft()
            if slot is self._close_after and transport is not None:
                transport.close()


def _dispatch(up: Upstream, conn: UpstreamProtocol, slot: _Slot, method: str, request: _Request) -> None:
    split = urlsplit(request.url.decode("latin-1"))
    path, query = split.path, split.query
    origin = f"http://{request.host or '127.0.0.1'}"
    if method == "POST" and path == "/v1/images/generations":
        up.stats["generations"] += 1
        raw = RAW_IMAGES in request.accept.lower()
        reply = up.worker.generation(b"".join(request.body), request.request_id, origin, raw=raw)
        if up.config.delay_s > 0 and reply.status == 200:
            up.worker.in_flight += 1

            def answer() -> None:
                up.worker.in_flight -= 1
                conn.respond(slot, reply)

            conn.later(up.config.delay_s, answer)
            return
        conn.respond(slot, reply)
        return
    if method == "GET" and path in ("/ready", "/load", "/health", "/v1/models"):
        kind = {"/ready": "ready", "/load": "ready", "/health": "health", "/v1/models": "models"}[path]
        up.stats[kind] += 1
        worker = up.worker
        conn.respond(slot, {"ready": worker.ready, "health": worker.health, "models": worker.models}[kind]())
        return
    if method == "GET" and path.startswith("/img/"):
        up.stats["img"] += 1
        size = parse_size(parse_qs(query).get("size", ["1024x1024"])[0]) or (1024, 1024)
        conn.respond(slot, Reply(200, (up.pngs.get(*size).data,), content_type="image/png"))
        return
    if path == "/_stats" and method == "GET":
        conn.respond(slot, up.stats_reply())
        return
    if path == "/_stats/reset" and method == "POST":
        up.stats = Counter({k: 0 for k in STAT_KINDS})
        conn.respond(slot, json_reply(200, {"reset": True}))
        return
    _dispatch_fal(up, conn, slot, method, path, query, origin, request)


def _dispatch_fal(
    up: Upstream, conn: UpstreamProtocol, slot: _Slot, method: str, path: str, query: str, origin: str,
    request: _Request,
) -> None:  # fmt: skip
    parts = path.strip("/").split("/")
    scheme, _, credentials = request.authorization.partition(" ")
    authorized = scheme == "Key" and bool(credentials)
    if "requests" in parts[1:]:
        at = parts.index("requests", 1)
        app, rest = "/".join(parts[:at]), parts[at + 1 :]
        if not rest or not authorized:
            up.stats["other"] += 1
            conn.respond(slot, json_reply(401 if not authorized else 404, {"detail": "Not Found"}))
            return
        job = up.fal.find(app, rest[0])
        if job is None:
            up.stats["other"] += 1
            conn.respond(slot, json_reply(404, {"detail": f"Request {rest[0]} not found"}))
            return
        _fal_request(up, conn, slot, method, rest[1:], query, origin, job)
        return
    if method == "POST" and len(parts) >= 2 and all(parts[:2]):
        up.stats["fal_submit"] += 1
        if not authorized:
            conn.respond(slot, json_reply(401, {"detail": "No user found for Key ID and Secret"}))
            return
        try:
            payload = json.loads(b"".join(request.body))
        except ValueError:
            payload = None
        conn.respond(slot, up.fal.submit("/".join(parts), payload, origin))
        return
    up.stats["other"] += 1
    conn.respond(slot, json_reply(404, {"detail": "Not Found"}))


def _fal_request(
    up: Upstream, conn: UpstreamProtocol, slot: _Slot, method: str, rest: list[str], query: str, origin: str,
    job: FalJob,
) -> None:  # fmt: skip
    logs = parse_qs(query).get("logs", ["0"])[0].lower() in ("1", "true")
    tail = [p for p in rest if p]  # a trailing slash is allowed (§2.2)
    if method == "GET" and tail == ["status"]:
        up.stats["fal_status"] += 1
        conn.respond(slot, up.fal.status(job, origin, logs=logs))
    elif method == "GET" and tail == ["status", "stream"]:
        up.stats["fal_stream"] += 1
        _stream(up.fal, conn, slot, job, origin, logs)
    elif method == "GET" and tail in ([], ["response"]):
        up.stats["fal_result"] += 1
        conn.respond(slot, up.fal.result(job, origin))
    elif method == "PUT" and tail == ["cancel"]:
        up.stats["fal_cancel"] += 1
        conn.respond(slot, up.fal.cancel(job))
    else:
        up.stats["other"] += 1
        conn.respond(slot, json_reply(404, {"detail": "Not Found"}))


def _stream(fal: FalQueue, conn: UpstreamProtocol, slot: _Slot, job: FalJob, origin: str, logs: bool) -> None:
    """SSE: the status object now and at each change; the stream ends after COMPLETED (§2.3)."""
    conn.send_parts(slot, [stream_head(200, "text/event-stream", (("x-fal-request-id", job.id),))], finished=False)

    def emit() -> None:
        if not conn.connected:
            slot.finished = True
            return
        _, body = fal.status_body(job, origin, logs=logs)
        event = chunk(b"data: " + json.dumps(body).encode() + b"\n\n")
        when = job.next_change(fal.now())
        if when is None:
            conn.send_parts(slot, [event, chunk(b"")], finished=True)
            return
        conn.send_parts(slot, [event], finished=False)
        conn.later(max(0.0, when - fal.now()) + 0.0005, emit)

    emit()


async def serve(config: UpstreamConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, Upstream]:
    """Start serving on the running loop; port 0 picks a free one (see server.sockets)."""
    upstream = Upstream(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(upstream), host, port, backlog=1024)
    return server, upstream


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.perf.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="worker generation time")
    parser.add_argument("--fal-delay-ms", type=float, default=None, help="fal job time (default: --delay-ms)")
    parser.add_argument("--image-bytes", type=int, default=0, help="pad each PNG to about this many bytes")
    parser.add_argument("--model", default="hidream-i1-full", help="the model the worker's /ready reports")
    parser.add_argument("--default-format", choices=("url", "b64_json"), default="url")
    args = parser.parse_args(argv)
    fal_delay = args.delay_ms if args.fal_delay_ms is None else args.fal_delay_ms
    config = UpstreamConfig(
        delay_s=args.delay_ms / 1000, fal_delay_s=fal_delay / 1000, image_bytes=args.image_bytes,
        model=args.model, default_format=args.default_format,
    )  # fmt: skip

    async def run() -> None:
        server, _ = await serve(config, args.host, args.port)
        print(f"fake upstream on http://{args.host}:{args.port} (delay {args.delay_ms} ms)", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
