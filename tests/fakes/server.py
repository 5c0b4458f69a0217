"""Run an ASGI app as a real HTTP server on a loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gateway.ports import LoopbackPorts

# One for the test run: no port handed to two servers of it (gateway/ports.py says why not bind(0)).
_PORTS = LoopbackPorts()


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
