"""A webhook target for tests: a real HTTP server on loopback (tests.fakes.server) that records
every delivery (headers and raw body) and answers each with the next status of a script."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import serve_in_thread


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base: str = ""
    statuses: list[int] = field(default_factory=list)  # answers in turn; 204 once they run out
    received: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return self.base + path

    def deliveries(self, path: str = "/hook") -> list[Delivery]:
        with self.lock:
            return [d for d in self.received if d.path == path]


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    async def hook(request: Request) -> Response:
        body = await request.body()
        with receiver.lock:
            receiver.received.append(Delivery(request.url.path, dict(request.headers), body))
            status = receiver.statuses.pop(0) if receiver.statuses else 204
        return Response(status_code=status)

    app = Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
    with serve_in_thread(app) as base:
        receiver.base = base
        yield receiver
