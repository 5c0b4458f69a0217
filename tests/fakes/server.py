"""Run an ASGI app as a real HTTP server on a loopback port, in a background thread."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn


class _Ports:
    """Loopback ports for the servers tests start, from below the kernel's ephemeral range (the ports
    it gives outgoing connections, 32768-60999 by default). A port from `bind(0)` is in that range,
    and between the test reading it and its server binding it an outgoing connection could take it:
    the soak test's fake upstream failed so ("address already in use") after tests that open many
    connections. Handed out in turn from a random start, each checked free: none twice until all were."""

    FIRST = 10_000

    def __init__(self) -> None:
        self._end = _ephemeral_start()
        self._next = random.randrange(self.FIRST, self._end) if self._end - self.FIRST >= 1000 else 0

    def take(self) -> int:
        for _ in range(self._end - self.FIRST if self._next else 0):
            port = self._next
            self._next = port + 1 if port + 1 < self._end else self.FIRST
            if _bindable(port):
                return port
        with socket.socket() as s:  # no room below the ephemeral range on this machine
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_PORTS = _Ports()


def free_port() -> int:
    """A loopback port no server of this run has been given, free now, outside the ephemeral range."""
    return _PORTS.take()


@contextmanager
def serve_in_thread(app: Any, port: int | None = None, http: Any = "auto") -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) while the server runs; `http` is uvicorn's
    protocol option (the gateway's own: gateway.api.server.http_protocol)."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
