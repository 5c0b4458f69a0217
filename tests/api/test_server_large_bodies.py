"""The gateway's HTTP protocol (gateway/api/server.py) on a real socket: a body handed over as a
large buffer, which it sends without copying, arrives whole and unchanged, as an image read for its
URL does (a memoryview of a fresh buffer)."""

from __future__ import annotations

import os

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.server import JOIN_UP_TO, HttpLimits, http_protocol
from tests.fakes.server import serve_in_thread

LIMITS = HttpLimits(
    max_header_bytes=16384, max_header_fields=100, header_timeout_s=10.0, body_timeout_s=10.0, body_min_rate=0.0
)
IMAGE = os.urandom(3 * 1024 * 1024 + 17)  # incompressible, as an image is, and past any buffer size


async def _image(request: Request) -> Response:
    buffer = bytearray(len(IMAGE) + 100)  # larger than the file, as when it shrank meanwhile
    buffer[: len(IMAGE)] = IMAGE
    return Response(memoryview(buffer)[: len(IMAGE)], media_type="image/png")


async def _small(request: Request) -> Response:
    return Response(memoryview(bytearray(b"s" * (JOIN_UP_TO // 2))), media_type="text/plain")


def test_large_and_small_buffers_arrive_whole_over_keep_alive() -> None:
    app = Starlette(routes=[Route("/image", _image), Route("/small", _small)])
    with serve_in_thread(app, http=http_protocol(LIMITS)) as url, httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):  # on one connection: each answer ends where the next begins
            got = client.get("/image")
            assert got.status_code == 200 and got.content == IMAGE
            small = client.get("/small")
            assert small.content == b"s" * (JOIN_UP_TO // 2)
